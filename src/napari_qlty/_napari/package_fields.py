"""A bioimage.io package chosen in the inference widget: what it says about itself, the
grid fields it sets (window from its valid sizes, border from its halo), and the tick box
that accepts the Python file a state-dict package runs to build its network."""

from __future__ import annotations

from magicgui.widgets import CheckBox

from ..models.bioimageio import PackageSpec, check_window, code_to_accept, package_grid, read_package, valid_sizes
from ._common import format_per_axis


class PackageChoice:
    """The package part of a model chooser: ``accept`` (hidden unless the package needs it)
    goes into the widget's form."""

    def __init__(self) -> None:
        self.accept = CheckBox(value=False, text="run the package's Python code", visible=False)
        self.package = None
        self._sha: str | None = None

    def describe(self, path: str, fields, image) -> str:
        """Read the package at ``path``; set the grid ``fields`` for ``image``; return the hint."""
        self.package, self._sha = None, None
        self.accept.value, self.accept.visible = False, False
        package = read_package(path)
        self.package = package
        needs = code_to_accept(package)
        if needs is not None:
            file, name, self._sha = needs
            self.accept.text = f"run {file} from this package ({name} builds the network: Python code, read it first)"
            self.accept.tooltip = ("Its weights are a state dict; the network around them is built by this file. "
                                   "It runs only when ticked, and only as it is now (sha256 checked).")
            self.accept.visible = True
        if image is not None:
            try:
                grid = package_grid(package, fields.tiled_shape(image), axes=fields.tiled_axes(image))
            except ValueError:
                grid = None
            if grid is not None:
                for edit, values in zip(fields.edits, (grid.window, grid.step, grid.border)):
                    edit.value = format_per_axis(values)
        space = package.input.space
        parts = [f"bioimage.io package '{package.name}'", f"axes {', '.join(space)}",
                 "windows " + "; ".join(f"{a} {valid_sizes(*package.input.size_of(a), count=3)}" for a in space),
                 "halo " + format_per_axis([package.output.halo_of(a) for a in space])]
        if package.classes:
            parts.append("classes " + ", ".join(package.classes))
        return " · ".join(parts)

    @property
    def needs_code(self) -> bool:
        """True when the chosen package runs Python code of its own (a state dict)."""
        return self.package is not None and self._sha is not None

    def spec(self, path: str) -> PackageSpec:
        """The package to run, with the code accepted only as it was shown."""
        if self.needs_code and not self.accept.value:
            raise ValueError(f"this package builds its network with Python code it holds: read it, then tick "
                             f"\u201c{self.accept.text}\u201d")
        accepted = self._sha if (self.accept.value and self._sha) else False
        return PackageSpec(path, accept_code=accepted)

    def check(self, grid) -> None:
        """A window the package does not take: an error naming the sizes it does (in the
        widget's words: "window along y")."""
        if self.package is None:
            return
        k = len(self.package.input.space)
        axes = (grid.axes or self.package.input.space)[-k:]
        check_window(dict(zip(axes, (self.package.input.size_of(a) for a in self.package.input.space))), axes,
                     grid.window[-k:])
