"""Pure functional ops in [batch, time, heads, dim] layout."""
