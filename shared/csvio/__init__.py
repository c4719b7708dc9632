"""CSV in and out for coding jobs, `isco predict` and coded training files.

    reading  the input: encoding, delimiter and header sniffed (`CsvLayout`), rows streamed, uploads checked
    writing  the output: result columns and rows, formula neutralisation, the csv writer's settings

Callers import from the module that owns a name; this package re-exports nothing.
"""
