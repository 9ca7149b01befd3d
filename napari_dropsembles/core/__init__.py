"""The computations: no Qt, napari or magicgui import anywhere below this package."""
