"""Rendering: manifest → per-role user-data and the files a baked image carries.

Public API:
- `render_role(manifest, role_name, *, baked=False, hosts=None, markers=None,
   extra_parts=()) -> RenderedRole`
- `image_content(manifest) -> ImageContent`
- `role_fragments(manifest, role_name) -> tuple[Fragment, ...]`
- `File`, `Fragment`, `Part`, `RenderedRole`, `ImageContent`
- `USER_DATA_LIMIT` (16384), `split_user_data(bytes) -> tuple[Part, ...]`
"""

from builder.render.assemble import USER_DATA_LIMIT, split_user_data
from builder.render.fragment import File, Fragment, ImageContent, Part, RenderedRole
from builder.render.role import RENDERERS, image_content, render_role, role_fragments

__all__ = [
    "RENDERERS",
    "USER_DATA_LIMIT",
    "File",
    "Fragment",
    "ImageContent",
    "Part",
    "RenderedRole",
    "image_content",
    "render_role",
    "role_fragments",
    "split_user_data",
]
