"""Model weights: the registry (``weights.toml``), the cache, verified downloads, conversion.

The library never prints. Callers that want feedback pass two optional callables (inside the
library they travel with ``offline`` as one ``agetool.loading.Loading``, which ``fetch`` also takes
as ``loading=``):

``report(message: str) -> None``
    Receives one-line notices: the license line on the first download of a non-commercial
    artifact (``"lats-male: CC BY-NC-SA 4.0 (non-commercial) https://..."``), a source that
    failed before the next one is tried, a cached or downloaded file that failed verification
    and was deleted, a checksum recorded on first use.

    Each download announces itself first: ``"lats-male: downloading 213.2 MB from https://..."``.

``progress(description: str, total_bytes: int | None) -> advance``
    Called when a transfer or a hash pass starts; ``advance(n_bytes)`` is then called as bytes
    go by (``n_bytes`` may be negative when a transfer restarts). If ``advance`` has a
    ``close()`` method it is called once when that pass ends, successful or not.

Errors are typed (``agetool.errors``), one line each: ``OfflineError`` when something is missing
and network access is off (``offline=True`` or ``HF_HUB_OFFLINE=1``), ``ChecksumError`` when every
copy found failed verification, ``DownloadError`` when every source failed (the message lists each
source with its failure, then the ways out: ``agetool weights import FILE --as NAME``, the
argument that takes such a file directly, and ``offline``), ``WeightsError`` for registry and cache
problems. An unreachable host fails over to the next source at once; see
``agetool.weights.transfer`` for retries, deadlines and size caps.

Files a user already has are placed with :func:`import_file` / :func:`import_folder`
(``agetool.weights.importing``: the released zip, the unzipped generator ``.pth``, agetool
``.safetensors``); ``trust=True`` registers a file of the user's own for a name (it must load, its
sha256 is pinned). Converting checkpoints is ``agetool.nn.checkpoint``'s job. Which registered files
a call needs and which are not at hand is ``agetool.needs``'s.

Environment: ``AGETOOL_REGISTRY`` (a registry file replacing the bundled one), ``AGETOOL_CACHE``
(default ``$XDG_CACHE_HOME/agetool``), ``HF_ENDPOINT``, ``HF_HOME`` / ``HF_HUB_CACHE``,
``HF_HUB_OFFLINE``, ``TORCH_HOME`` (where face-alignment's files are placed).
"""

from agetool.weights.core import (Check, Status, bundled_path, fetch, generator_path, human_size, is_offline,
                                  place_face_alignment_files, resolve, status, statuses, verify)
from agetool.weights.importing import Imported, import_file, import_folder
from agetool.weights.registry import Artifact, Source, get, load_registry, registry_path
from agetool.weights.store import cache_dir

__all__ = [
    "Artifact", "Check", "Imported", "Source", "Status", "bundled_path", "cache_dir", "fetch",
    "generator_path", "get", "human_size", "import_file", "import_folder", "is_offline", "load_registry",
    "place_face_alignment_files", "registry_path", "resolve", "status", "statuses", "verify",
]
