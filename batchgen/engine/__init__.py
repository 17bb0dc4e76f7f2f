"""The run engine: submit, poll, collect, the poll schedule and the budget."""
