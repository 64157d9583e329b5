"""Pure annotators: text → marker values (language, length, response format, code type).

No Ray, no I/O, no model: the annotate stage runs them on every row, and evaluation re-annotates
generated answers with the same functions to measure adherence, so both read one definition.
"""
