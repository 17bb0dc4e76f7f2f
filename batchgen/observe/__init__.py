"""What a run tells the outside: log, summary, metrics, notifications, progress."""
