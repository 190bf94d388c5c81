"""The dock widgets; napari imports each on demand (see ``napari.yaml``)."""
