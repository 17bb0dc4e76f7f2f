"""The Runbase API: the HTTP client, its answers, the per-key limiter, the model specs."""
