"""Folders of photos at cluster scale on Ray Data (``pip install "agetool[ray]"``).

``age_photos`` runs a whole job. On nodes without GPUs one stage does everything, one actor per CPU
with one torch thread each:

    FusedStage      read, find the faces, age them, write the grid and tiles (CPU actors)

With GPUs the CPU work and the generator run apart and overlap (faces of the next photos are found
while the generator renders):

    FaceStage       read, detect, align, parse, mask, estimate, choose each face's model (CPU actors)
    GeneratorStage  encode and render every face at every age, paste back (actors, one GPU each)
    write_results   grid, tiles (CPU tasks)

Each actor loads its models once; an actor whose process dies is restarted and its batch retried.
A photo that fails (unreadable, no face) becomes a row with an error and the job goes on;
``Summary.failed`` lists them. A photo whose grid exists is skipped, so a rerun of a job that
stopped finishes it. The outputs are those of ``agetool age``, byte for byte, whatever the number of
torch threads of each actor.

The stages are building blocks for your own Ray Data job; rows carry ``photo`` (a local path or a
URI such as ``s3://bucket/me.jpg``, or add a ``bytes`` column as ``ray.data.read_binary_files``
gives), ``grid`` and ``tiles`` (output paths; ``""`` for none)::

    import ray
    from agetool.ray import FaceStage, GeneratorStage, write_results

    ds = ray.data.from_items([{"photo": "s3://bucket/me.jpg", "grid": "/shared/me_ages.png", "tiles": ""}])
    ds = ds.map_batches(FaceStage, fn_constructor_kwargs={"pipeline": {"model": "female"}},
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=8), num_cpus=1, batch_size=1)
    ds = ds.map_batches(GeneratorStage, fn_constructor_kwargs={"pipeline": {"model": "female"}},
                        compute=ray.data.ActorPoolStrategy(size=2), num_gpus=1, batch_size=1)
    ds = ds.map_batches(write_results, num_cpus=0, batch_size=1)
    for row in ds.iter_rows():
        print(row["photo"], row["error"] or row["grid"])
"""

from agetool.ray.job import INSTALL_HINT, Job, Summary, age_photos, build_dataset, session
from agetool.ray.stages import FaceStage, FusedStage, GeneratorStage, error_from, job_request, write_results

__all__ = ["INSTALL_HINT", "FaceStage", "FusedStage", "GeneratorStage", "Job", "Summary", "age_photos",
           "build_dataset", "error_from", "job_request", "session", "write_results"]
