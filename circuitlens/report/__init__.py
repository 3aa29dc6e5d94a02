"""Floor 8, presentation: the HTML page (``page``: ``write_report``) and the Plotly figures
(``figures``), read from result objects."""
