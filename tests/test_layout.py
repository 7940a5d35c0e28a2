"""The house rules that code can check: rooms import one way (no cycle), and each wing imports only the wings
below it, through their faces (``__init__.py``)."""

import ast
import importlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ueo"
# low to high; the foundation rooms (errors, config, files, version) sit under every wing, `classifier` (the face
# for using what was learned) between method and discovery, the command line on top
ORDER = ["foundation", "data", "images", "views", "model", "method", "classifier", "discovery", "outputs"]
ORDER += ["experiments", "cli"]
FOUNDATION = {"errors", "config", "files", "version", "faces"}
WINGS = [w for w in ORDER if (PACKAGE / w).is_dir()]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(module: str) -> str | None:
    """The wing (or foundation, or classifier) of a module name ``ueo....``; None for the package itself."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] in ("__init__", "__main__"):
        return None
    if parts[1] in FOUNDATION:
        return "foundation"
    return parts[1]


def imported(path: Path):
    """(node, resolved target module, imported names) of every ueo import of a file, at any depth."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if target == "ueo" or target.startswith("ueo."):
                yield node, target, [alias.name for alias in node.names]


def room_of(target: str, name: str) -> str:
    """The room a name comes from: a room itself, a name of a wing's face (resolved through the face), or the
    module's own name."""
    candidate = f"{target}.{name}"
    if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists():
        return candidate
    if (PACKAGE.parent / target.replace(".", "/")).is_dir() and target.count(".") == 1 and target != "ueo.cli":
        where = importlib.import_module(target)._WHERE  # the face's table: name -> room
        if name in where:
            return f"{target}.{where[name]}"
    return target


def imports_of(path: Path) -> set:
    """The ueo rooms a file imports (faces resolved to the rooms that define the names)."""
    found = {room_of(target, name) for _, target, names in imported(path) for name in names}
    return {name for name in found if name.startswith("ueo.") and name != module_name(path)}


def test_no_import_cycle():
    graph = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    graph = {m: {d for d in deps if d in graph} for m, deps in graph.items()}
    state = {}

    def visit(module, trail):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import cycle: " + " -> ".join([*trail, module])
        state[module] = "open"
        for dependency in sorted(graph[module]):
            visit(dependency, [*trail, module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])
    # the checker sees edges, through faces too
    assert "ueo.views.feed" in graph["ueo.method.inference"] and "ueo.views.spec" in graph["ueo.views.fastpath"]
    assert "ueo.model.prompts" in graph["ueo.method.training"]


def test_each_wing_imports_lower_wings_through_their_faces():
    """A room imports its own wing's rooms directly, and another wing only if it is lower, only through its
    face: a name the face lists, or one of the wing's rooms as a module (``from ..outputs import tables``)."""
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        me = floor(module_name(path))
        if me is None or path.name == "__init__.py":
            continue
        for node, target, names in imported(path):
            other = floor(target) if target != "ueo" else None
            if other in (None, me) or (other in ("foundation", "classifier") and ORDER.index(other) < ORDER.index(me)):
                continue
            where = f"{path.relative_to(PACKAGE)}:{node.lineno} imports {target}"
            if ORDER.index(other) >= ORDER.index(me):
                wrong.append(f"{where}: {other} is not below {me}")
            elif target != f"ueo.{other}":
                wrong.append(f"{where}: not through the face of {other}")
            else:
                face = importlib.import_module(target)
                rooms = {p.stem for p in (PACKAGE / other).glob("*.py")}
                wrong += [f"{where}: {n} is not on its face" for n in names if n not in face.__all__ and n not in rooms]
    assert not wrong, wrong
    assert len(WINGS) == 9  # (the checker knows the wings)


def test_every_face_names_only_what_its_rooms_define():
    for wing in WINGS:
        face = importlib.import_module(f"ueo.{wing}")
        if wing == "cli":
            continue
        assert face.__all__ and len((PACKAGE / wing / "__init__.py").read_text().splitlines()) >= 3
        for name in face.__all__:
            assert getattr(face, name) is getattr(importlib.import_module(f"ueo.{wing}.{face._WHERE[name]}"), name)


def test_module_paths_from_before_the_wings_still_import_the_same_modules():
    import ueo.cache
    import ueo.images
    import ueo.training
    from ueo.data import read_folder
    from ueo.images import check_images

    assert ueo.cache is importlib.import_module("ueo.images.cache")
    assert ueo.training.fit is ueo.fit and check_images is importlib.import_module("ueo.images.reading").check_images
    assert read_folder is importlib.import_module("ueo.data.folders").read_folder


MAX_LINES = 400


def test_no_private_name_is_imported_from_another_module():
    """A name with a leading underscore is its module's own business: other modules use public names."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("ueo")):
                found += [
                    f"{path.relative_to(PACKAGE)}: {alias.name} from {'.' * node.level}{node.module or ''}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert not found, found


def test_no_module_is_over_400_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long
