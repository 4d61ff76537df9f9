"""The apply mode: run the chosen pipeline over whole datasets (tiles, Dask), then analyse and export."""
