"""napari layers <-> core volumes and results, as plain data (no Qt, no viewer needed).

Putting layers into a viewer (order, visibility, selection, camera) is :mod:`.placement`'s.

World coordinates are the same on both sides: a layer's data-to-world transform (scale,
translate, rotate, shear, affine) is the affine of the :class:`Volume` it becomes, and every
result carries its frame back in world mm. Result layers are tagged in ``metadata`` with the
input they came from and their role, so a re-run replaces them instead of adding copies.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..core.config.errors import InputError
from ..core.results.structures import StructureSet, combine_structures, concatenate_meshes
from ..core.volumes.frame import in_world_axis_order
from ..core.volumes.mesh import Mesh
from ..core.volumes.volume import Volume

TAG = "dropsembles"  # metadata key of result layers: {"role": ..., "source": ..., "source_name": ...}
RESULT_ROLES = ("mean", "thresholded", "variance", "mesh", "members")
ROLE_NAMES = {
    "mean": "mean occupancy",
    "thresholded": "thresholded",
    "variance": "variance (p²)",
    "mesh": "mesh",
    "members": "member mesh",
    "preview": "preview",
    "mask_preview": "threshold mask",
}
LayerDataTuple = tuple  # (data, kwargs, layer_type), napari's convention


# --------------------------------------------------------------------------- frames


def world_affine_from_state(state: Mapping) -> np.ndarray:
    """4x4 data index -> world of the last 3 axes of a layer state (napari's ``_get_state()`` keys).

    napari maps data to world as ``affine @ (translate + rotate @ shear @ scale)``.
    """
    from napari.utils.transforms import Affine

    ndim = len(state.get("scale", (1.0, 1.0, 1.0)))
    physical = Affine(
        scale=state.get("scale", (1.0,) * ndim),
        translate=state.get("translate", (0.0,) * ndim),
        rotate=state.get("rotate"),
        shear=state.get("shear"),
        ndim=ndim,
    ).affine_matrix
    extra = state.get("affine")
    if extra is not None:
        extra = extra.affine_matrix if hasattr(extra, "affine_matrix") else np.asarray(extra, dtype=float)
        physical = extra @ physical
    full = np.asarray(physical, dtype=float)
    if full.shape[0] > 4:  # keep the last three (spatial) axes
        keep = list(range(full.shape[0] - 4, full.shape[0]))
        full = full[np.ix_(keep, keep)]
    return full


def layer_state(layer) -> dict:
    """The transform part of a layer's state from its public attributes."""
    return {
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "rotate": np.asarray(layer.rotate),
        "shear": np.asarray(layer.shear),
        "affine": np.asarray(layer.affine.affine_matrix),
    }


def _transform_kwargs(state: Mapping) -> dict:
    """napari keyword arguments that give another layer the same transform (trivial parts left out)."""
    ndim = len(state["scale"])
    kwargs = {
        "scale": tuple(float(s) for s in state["scale"]),
        "translate": tuple(float(t) for t in state["translate"]),
    }
    rotate = np.asarray(state.get("rotate", np.eye(ndim)), dtype=float)
    if rotate.shape == (ndim, ndim) and not np.allclose(rotate, np.eye(ndim)):
        kwargs["rotate"] = rotate
    shear = np.asarray(state.get("shear", 0.0), dtype=float)
    if shear.size and not (np.allclose(shear, 0) or (shear.shape == (ndim, ndim) and np.allclose(shear, np.eye(ndim)))):
        kwargs["shear"] = shear
    affine = np.asarray(state.get("affine", np.eye(ndim + 1)), dtype=float)
    if not np.allclose(affine, np.eye(affine.shape[0])):
        kwargs["affine"] = affine
    return kwargs


@dataclass(frozen=True, eq=False)
class InputFrame:
    """What results need to know of their input layer: name, identity and data -> world transform."""

    name: str
    source_id: str
    world_affine: np.ndarray = field(repr=False)  # 4x4, data index -> world mm
    transform: dict = field(repr=False)  # napari kwargs giving a layer the input's transform

    @classmethod
    def from_layer(cls, layer) -> InputFrame:
        state = layer_state(layer)
        source_id = str(getattr(layer, "unique_id", None) or id(layer))
        return cls(layer.name, source_id, world_affine_from_state(state), _transform_kwargs(state))

    @classmethod
    def from_volume(cls, volume: Volume, name: str) -> InputFrame:
        """For results of a file (no layer): the volume's own frame."""
        frame = volume.napari_frame()
        state = {"scale": frame.get("scale", (1.0, 1.0, 1.0)), "translate": frame.get("translate", (0.0, 0.0, 0.0))}
        if "affine" in frame:
            state["affine"] = frame["affine"]
        source_id = f"file:{name}:{uuid.uuid4().hex[:8]}"
        return cls(name, source_id, np.asarray(volume.affine, float), _transform_kwargs(state))

    def world_to_data(self, points_mm: np.ndarray) -> np.ndarray:
        inverse = np.linalg.inv(self.world_affine)
        return np.asarray(points_mm, dtype=float) @ inverse[:3, :3].T + inverse[:3, 3]


def layer_to_volume(layer) -> Volume:
    """A copy of a 3D Image or Labels layer's data with its world affine; clear errors otherwise."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    if getattr(layer, "rgb", False):
        raise InputError(f"layer '{layer.name}' is an RGB image; the reconstruction needs one 3D channel")
    data = np.array(data, copy=True)
    if data.ndim != 3:
        raise InputError(
            f"layer '{layer.name}' holds {data.ndim}D data of shape {tuple(data.shape)}; "
            "the reconstruction needs one 3D volume (split channels or time points into separate layers first)"
        )
    if data.size == 0:
        raise InputError(f"layer '{layer.name}' is empty (shape {tuple(data.shape)})")
    return Volume(data, world_affine_from_state(layer_state(layer)))


# --------------------------------------------------------------------------- results -> layer data


def result_metadata(frame: InputFrame, role: str, **extra) -> dict:
    """The tag of a layer made from the input ``frame`` (its role; ``extra`` facts about it)."""
    return {TAG: {"role": role, "source": frame.source_id, "source_name": frame.name, **extra}}


_metadata = result_metadata


def _name(frame: InputFrame, role: str) -> str:
    return f"{frame.name} {ROLE_NAMES[role]}"


def variance_limits(variance: Volume, mesh: Mesh | None = None) -> tuple[float, float]:
    """Contrast limits shared by the variance heatmap and the mesh colours.

    The top is set by the variance where it matters, on the surface (98th percentile of the
    mesh's vertex values); without a surface, by the grid (99.9th percentile).
    """
    if mesh is not None and not mesh.is_empty and mesh.vertex_values is not None:
        values = np.asarray(mesh.vertex_values, dtype=np.float32)
        top = float(np.percentile(values[np.isfinite(values)], 98)) if np.isfinite(values).any() else 0.0
    else:
        data = np.asarray(variance.data, dtype=np.float32)
        finite = data[np.isfinite(data)]
        top = float(np.percentile(finite, 99.9)) if finite.size else 0.0
    return 0.0, max(top, 1e-6)


# Custom colormaps' names are listed in every image layer's colormap box made after them: a name wider than
# napari's widest ('twilight shifted') widens the layer-controls dock, which resizes the canvas (a full repaint)
MESH_COLORMAP, HEATMAP_COLORMAP = "inferno surface", "inferno fade-in"


def mesh_colormap():
    """inferno from 25% up: the same colours as the heatmap, but zero variance is not black on a dark canvas."""
    from napari.utils.colormaps import Colormap, ensure_colormap

    return Colormap(ensure_colormap("inferno").map(np.linspace(0.25, 1.0, 64)), name=MESH_COLORMAP)


def heatmap_colormap():
    """inferno that fades in: no variance is transparent (the image shows through), high variance is vivid."""
    from napari.utils.colormaps import Colormap, ensure_colormap

    colours = ensure_colormap("inferno").map(np.linspace(0.15, 1.0, 64)).copy()
    colours[:, 3] = np.clip(np.linspace(0.0, 1.0, 64) / 0.35, 0.0, 0.85)
    return Colormap(colours, name=HEATMAP_COLORMAP)


def surface_data(mesh: Mesh, frame: InputFrame) -> tuple:
    """(vertices in the input's data coordinates, faces, values); a degenerate triangle when empty."""
    if mesh.is_empty:
        centre = frame.world_to_data(frame.world_affine[:3, 3][None])  # any point: the input's origin
        return np.repeat(centre, 3, axis=0).astype(np.float32), np.array([[0, 1, 2]], np.int32), np.zeros(3, np.float32)
    values = mesh.vertex_values if mesh.vertex_values is not None else np.zeros(len(mesh.vertices_mm), np.float32)
    return frame.world_to_data(mesh.vertices_mm).astype(np.float32), mesh.faces, values.astype(np.float32)


def mesh_layer_data(
    mesh: Mesh, frame: InputFrame, limits: tuple[float, float], role: str = "mesh", *, name: str | None = None, **extra
) -> tuple:
    """A Surface in the input's own transform, coloured by its vertex values (variance)."""
    kwargs = {
        "name": name or _name(frame, role),
        "colormap": mesh_colormap(),
        "contrast_limits": limits,
        "shading": "smooth",
        "metadata": _metadata(frame, role, empty=mesh.is_empty, **extra),
        **frame.transform,
    }
    if role == "members":
        kwargs.update(opacity=0.6, visible=True)
    return surface_data(mesh, frame), kwargs, "surface"


def as_structures(result) -> StructureSet:
    """A Reconstruction is a set of one structure (label 1)."""
    return result if isinstance(result, StructureSet) else combine_structures({1: result})


def structure_meshes(structures: StructureSet, threshold: float, *, step_size: int = 1) -> dict[int, Mesh]:
    """label -> that structure's surface at ``threshold`` (the cached mesh when it was extracted there)."""
    meshes = {}
    for label, result in sorted(structures.results.items()):
        if step_size == 1 and abs(float(threshold) - result.config.threshold) < 1e-9:
            meshes[label] = result.mesh
        else:
            meshes[label] = result.remesh(threshold, step_size=step_size)
    return meshes


def structure_name(label: int, names: Mapping[int, str] | None) -> str:
    return (names or {}).get(int(label), f"label {int(label)}")


def structure_mesh_name(frame_name: str, label: int, names: Mapping[int, str] | None) -> str:
    return f"{frame_name} mesh {structure_name(label, names)}"


def reconstruction_to_layer_data(
    result,
    input_layer,
    *,
    threshold: float | None = None,
    member: int | None = None,
    names: Mapping[int, str] | None = None,
) -> list[LayerDataTuple]:
    """Result layers of a Reconstruction or StructureSet, aligned with ``input_layer`` in world mm.

    ``mean occupancy`` (Image, iso, hidden until asked for), ``variance`` (Image, inferno fading in
    from transparent), ``thresholded`` (Labels drawn as outlines), ``mesh`` (Surface, values =
    variance, same contrast limits as the heatmap) and, when ``member`` is given, that member's mesh.
    Several structures get one mesh layer each (named with ``names``: label -> name), tagged with
    their ``structure``.
    """
    structures = as_structures(result)
    frame = input_layer if isinstance(input_layer, InputFrame) else InputFrame.from_layer(input_layer)
    level = structures.threshold if threshold is None else float(threshold)
    extra = {"labels": structures.labels, "members": structures.members, "device": structures.device}
    several = len(structures.results) > 1
    meshes = structure_meshes(structures, level) if several else None
    mesh = concatenate_meshes(list(meshes.values())) if several else structures.remesh(level)
    layers = maps_to_layer_data(
        structures.mean,
        structures.variance,
        mesh,
        frame,
        level,
        thresholded=structures.label_volume(level),
        structure_meshes=meshes,
        names=names,
        **extra,
    )
    if member is not None:
        limits = variance_limits(structures.variance, mesh)
        layers.append(mesh_layer_data(structures.member_mesh(member, level), frame, limits, "members", member=member))
    return layers


def maps_to_layer_data(
    mean: Volume,
    variance: Volume,
    mesh: Mesh,
    frame: InputFrame,
    threshold: float,
    *,
    thresholded: Volume | None = None,
    structure_meshes: Mapping[int, Mesh] | None = None,
    names: Mapping[int, str] | None = None,
    **extra,
) -> list[LayerDataTuple]:
    """Layer data of a mean / variance pair and its mesh (also used for saved result folders); with
    ``structure_meshes`` (label -> Mesh), one mesh layer per structure instead of ``mesh``."""
    # maps of a run from the dock lie on the input layer's grid, already in world axis order; a saved folder's
    # lie on the file's own grid, which may be stored in another order (napari cannot draw that)
    mean, variance = in_world_axis_order(mean), in_world_axis_order(variance)
    limits = variance_limits(variance, mesh)
    if thresholded is None:
        thresholded = mean.with_data((np.asarray(mean.data) >= threshold).astype(np.uint8))
    else:
        thresholded = in_world_axis_order(thresholded)
    extra = {"threshold": threshold, **extra}
    if structure_meshes:
        surfaces = [
            mesh_layer_data(
                part, frame, limits, name=structure_mesh_name(frame.name, label, names), structure=int(label), **extra
            )
            for label, part in structure_meshes.items()
        ]
    else:
        surfaces = [mesh_layer_data(mesh, frame, limits, **extra)]
    return [
        (
            np.asarray(mean.data, np.float32),
            {
                "name": _name(frame, "mean"),
                "colormap": "gray",
                "contrast_limits": (0.0, 1.0),
                "rendering": "iso",
                "iso_threshold": threshold,
                "blending": "additive",
                "opacity": 0.7,
                "visible": False,  # the outline and the heatmap say it; shown when asked
                "metadata": _metadata(frame, "mean", **extra),
                **mean.napari_frame(),
            },
            "image",
        ),
        (
            np.asarray(variance.data, np.float32),
            {
                "name": _name(frame, "variance"),
                "colormap": heatmap_colormap(),
                "blending": "translucent",
                "contrast_limits": limits,
                "metadata": _metadata(frame, "variance", **extra),
                **variance.napari_frame(),
            },
            "image",
        ),
        (
            np.asarray(thresholded.data),
            {
                "name": _name(frame, "thresholded"),
                "opacity": 1.0,
                "metadata": _metadata(frame, "thresholded", **extra),
                **thresholded.napari_frame(),
            },
            "labels",
        ),
        *surfaces,
    ]


def mask_preview_layer_data(layer, level: float) -> LayerDataTuple:
    """The outline of an intensity image at ``level`` (what 'Threshold image' will reconstruct)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    frame = InputFrame.from_layer(layer)
    return (
        (np.asarray(data) >= level).astype(np.uint8),
        {
            "name": _name(frame, "mask_preview"),
            "opacity": 0.9,
            "metadata": _metadata(frame, "mask_preview"),
            **frame.transform,
        },
        "labels",
    )


def preview_layer_data(preview: Volume, frame: InputFrame, threshold: float) -> LayerDataTuple:
    """The coarse live mean occupancy shown while fine-tuning (removed when the run ends). Its grid follows
    the fit's frame (a thick axis last): put back in world axis order, which napari can draw."""
    preview = in_world_axis_order(preview)
    return (
        np.asarray(preview.data, np.float32),
        {
            "name": _name(frame, "preview"),
            "colormap": "cyan",
            "contrast_limits": (0.0, 1.0),
            "rendering": "iso",
            "iso_threshold": threshold,
            "blending": "additive",
            "opacity": 0.6,
            "metadata": _metadata(frame, "preview"),
            **preview.napari_frame(),
        },
        "image",
    )


# --------------------------------------------------------------------------- layers in a viewer


def label_names(layer) -> dict[int, str]:
    """label -> name, from the layer's features (a 'name' column; labels in 'index'/'label' or the row
    number) or its metadata (``label_names``: {label: name}); {} when it has none."""
    names: dict[int, str] = {}
    metadata = getattr(layer, "metadata", None) or {}
    for key, value in dict(metadata.get("label_names", {}) or {}).items():
        names[int(key)] = str(value)
    features = getattr(layer, "features", None)
    if features is not None and len(features):
        column = next((c for c in ("name", "label_name", "names") if c in features.columns), None)
        if column is not None:
            ids = (
                features["index"]
                if "index" in features.columns
                else (features["label"] if "label" in features.columns else features.index)
            )
            for label, name in zip(ids, features[column], strict=False):
                if isinstance(name, str) and name:
                    names[int(label)] = name
    return names


OUTLINE_CHOICES = ((0.0, 0.9, 1.0, 1.0), (0.55, 1.0, 0.3, 1.0), (1.0, 0.35, 1.0, 1.0))
# cyan, lime, magenta: not the yellow of the suggested-slice frame, the heatmap's orange, nor a CT's white bone


def outline_colour(avoid: Iterable[tuple]) -> tuple:
    """The outline colour that stands out most from the input's own label colours (cyan when it has none)."""
    avoid = [np.asarray(c[:3], float) for c in avoid]
    if not avoid:
        return OUTLINE_CHOICES[0]
    distances = [min(float(np.linalg.norm(np.asarray(c[:3]) - a)) for a in avoid) for c in OUTLINE_CHOICES]
    return OUTLINE_CHOICES[int(np.argmax(distances))]


def outline_colormap(labels: Iterable[int], avoid: Iterable[tuple]):
    """A label colormap drawing every structure's outline in :func:`outline_colour` (background transparent)."""
    from napari.utils.colormaps import DirectLabelColormap

    colour = outline_colour(avoid)
    return DirectLabelColormap(color_dict={None: colour, 0: (0.0, 0.0, 0.0, 0.0), **{int(k): colour for k in labels}})


def label_colours(layer, labels: Iterable[int]) -> dict[int, tuple]:
    """label -> RGBA of a Labels layer's colormap ({} for other layers)."""
    if layer is None or not hasattr(layer, "get_color"):
        return {}
    colours = {}
    for label in labels:
        colour = layer.get_color(int(label))
        if colour is not None:
            colours[int(label)] = tuple(float(c) for c in colour)
    return colours


def slice_outline(shape: tuple, axis: int, index: int) -> np.ndarray:
    """The 4 corners (data coordinates) of slice ``index`` along ``axis`` of a grid of ``shape``: a rectangle
    around the whole slice, on the voxel edges."""
    others = [a for a in range(3) if a != axis]
    corners = np.zeros((4, 3))
    corners[:, axis] = index
    low = [-0.5, -0.5]
    high = [shape[others[0]] - 0.5, shape[others[1]] - 0.5]
    for row, (u, v) in enumerate(((low[0], low[1]), (low[0], high[1]), (high[0], high[1]), (high[0], low[1]))):
        corners[row, others[0]], corners[row, others[1]] = u, v
    return corners


def slice_view_order(axis: int, ndim: int = 3) -> tuple[int, ...]:
    """napari dims order that puts data axis ``axis`` (of the last three) on the slider, the others shown
    superior (or anterior) up as :func:`viewing_order` does."""
    vertical = 2 if axis != 2 else 1
    horizontal = ({0, 1, 2} - {axis, vertical}).pop()
    offset = ndim - 3
    return (*range(offset), offset + axis, offset + vertical, offset + horizontal)


def viewing_order(world_affine: np.ndarray) -> tuple[int, int, int]:
    """World axes as (slider, vertical, horizontal): the thick-slice axis on the slider (the axial one
    when spacing is isotropic); superior up, else anterior up (RAS world axes)."""
    matrix = np.asarray(world_affine, float)[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    world_of = [int(np.argmax(np.abs(matrix[:, j]))) for j in range(3)]  # data axis -> nearest world axis
    if len(set(world_of)) < 3:
        world_of = [0, 1, 2]
    anisotropic = spacing.max() > 1.2 * spacing.min()
    thick = world_of[int(np.argmax(spacing))] if anisotropic else 2  # isotropic: axial (the S axis of RAS)
    vertical = 2 if thick != 2 else 1
    horizontal = ({0, 1, 2} - {thick, vertical}).pop()
    return thick, vertical, horizontal


def role_of(layer) -> str | None:
    tag = (getattr(layer, "metadata", None) or {}).get(TAG)
    return tag.get("role") if isinstance(tag, dict) else None


def layer_key(metadata: Mapping) -> str | None:
    """A result layer's key among its input's results: its role, and its structure for a structure's mesh
    (``mesh:5``)."""
    tag = (metadata or {}).get(TAG)
    if not isinstance(tag, dict):
        return None
    structure = tag.get("structure")
    return tag.get("role") if structure is None else f"{tag.get('role')}:{structure}"


def result_layers(layers: Iterable, source_id: str) -> dict[str, object]:
    """key (:func:`layer_key`) -> layer of the results (and preview) made from the input ``source_id``."""
    found = {}
    for layer in layers:
        metadata = getattr(layer, "metadata", None) or {}
        tag = metadata.get(TAG)
        if isinstance(tag, dict) and tag.get("source") == source_id:
            found[layer_key(metadata)] = layer
    return found


def structure_mesh_layers(layers: Mapping[str, object]) -> dict[int, object]:
    """label -> mesh layer of each structure (multi-structure results; {} for one structure)."""
    return {int(key.split(":", 1)[1]): layer for key, layer in layers.items() if key and key.startswith("mesh:")}
