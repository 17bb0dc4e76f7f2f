"""Reading a batch back: the HTML report, charts, posters, export and plan."""
