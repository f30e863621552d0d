"""The ingest API's command-line client: `rmbg submit | jobs | job | download | stats | tags search`.

``commands.register`` adds the commands to the `rmbg` Typer app; the rest are the pieces they are made of
(the HTTP wrapper, following a job, files and options, tables).
"""
