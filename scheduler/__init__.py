"""The one process that deletes data on a clock and recovers jobs whose worker died."""
