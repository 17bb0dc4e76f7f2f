"""One run of a batch: the runner, its options, signals, failures and the lock."""
