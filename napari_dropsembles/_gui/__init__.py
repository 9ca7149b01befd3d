"""The napari adapters: widgets, workers and the conversion of results into layers.

``state``, ``tasks`` and ``layers`` import no Qt (they are testable without a display);
the widget modules do.
"""
