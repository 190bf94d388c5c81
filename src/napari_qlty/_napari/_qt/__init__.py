"""Qt-specific helpers shared by the widgets (the rest of the plugin is plain Python)."""
