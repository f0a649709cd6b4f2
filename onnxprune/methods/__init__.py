"""One module per pruning method, each a readable run of the pipeline stages."""
