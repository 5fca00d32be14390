"""``prepare`` on a Dask cluster: the same capture tasks as ``--workers``, on many machines.

``--workers`` shares a capture list out among the cores of one machine; ``--cluster``
hands the very same tasks (a capture, or some flow buckets of a large one) to the workers
of a ``dask.distributed`` cluster: a scheduler at ``tcp://HOST:8786`` that the user
started, or a ``LocalCluster`` of N worker processes (``local:N``) on this machine. Each
worker reads its captures by path and writes its part files straight into the dataset's
unfinished folder, so the captures and the output folder must be on storage that every
worker sees under the same path (NFS, a parallel file system, one machine's disk for a
local cluster). The client gathers the per-capture results and writes the card; the part
files are the same bytes as a run with ``--workers 1`` writes.

A worker that dies (killed for memory, a lost machine) takes only its task down: the
scheduler runs the task again on another worker (a local cluster allows one more try,
the rule of the process pool; a scheduler started by hand follows its own
``distributed.scheduler.allowed-failures``), and a task that kills its worker again is
reported in the card as a capture whose worker died, its part files removed.

Dask is an optional extra (``pip install dmfnet[cluster]``); nothing here is imported
unless ``--cluster`` is given.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dmfnet import __version__
from dmfnet.data.prepare import CaptureResult, OutputError, PrepareError, _remove_parts, _Task

MISSING_EXTRA = (
    "--cluster needs Dask's distributed scheduler, which is not installed: "
    "pip install 'dmfnet[cluster]'"
)
LOCAL_PREFIX = "local:"
WORKER_DIED = "worker process died (out of memory?)"
CONNECT_TIMEOUT_S = 30  # waiting for a scheduler, and for its first worker
# A local cluster's scheduler: a task that kills its worker is run once more, then
# reported (the process pool's rule); and a worker holds no more tasks than it has threads,
# so that a worker's death takes only the task it was running down with it (Dask's default
# queues a few more on each worker, and counts those as having killed it too).
# Its workers also start without the MALLOC_TRIM_THRESHOLD_ Dask's nanny sets by default:
# setting it turns off glibc's adaptive mmap threshold, so that every large numpy array is
# freshly mapped and faulted in (1 GB of captures took 10.4 s instead of 7.7 s, local:1).
LOCAL_SCHEDULER_CONFIG = {
    "distributed.scheduler.allowed-failures": 1,
    "distributed.scheduler.worker-saturation": 1.0,
    "distributed.nanny.pre-spawn-environ": {
        "OMP_NUM_THREADS": 1,
        "MKL_NUM_THREADS": 1,
        "OPENBLAS_NUM_THREADS": 1,
    },
}
# The module, not its function: ``dmfnet.data.prepare`` is also the name of the function.
prepare_module = importlib.import_module("dmfnet.data.prepare")


def parse_cluster(spec: str) -> tuple[str, int | str]:
    """``"local:N"`` -> ``("local", N)``; a scheduler address -> ``("scheduler", address)``.

    An address is ``tcp://HOST:PORT`` (or ``tls://``, ``ucx://``, ``inproc://``, or a
    bare ``HOST:PORT``, which Dask reads as TCP).
    """
    spec = spec.strip()
    if spec.startswith(LOCAL_PREFIX):
        count = spec[len(LOCAL_PREFIX) :]
        if not count.isdigit() or int(count) < 1:
            raise PrepareError(f"--cluster {spec}: local:N needs a number of workers N >= 1")
        return "local", int(count)
    if re.fullmatch(r"([a-z]+://)?[^\s/:]+(:\d+)?", spec) is None:
        raise PrepareError(
            f"--cluster {spec!r}: not a scheduler address (tcp://HOST:8786) nor local:N"
        )
    return "scheduler", spec


def check_installed(cluster: Any) -> None:
    """Before anything is written: a spec that parses, and Dask installed (one clear line)."""
    if isinstance(cluster, str):
        parse_cluster(cluster)
    _import_distributed()


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise PrepareError(MISSING_EXTRA) from None
    return distributed


@contextlib.contextmanager
def connect(cluster: Any) -> Iterator[Any]:
    """A ``distributed.Client`` for ``cluster``: a spec string, or a Client to use as it is.

    A local cluster is started here (worker processes of one thread each, listening on
    the loopback address only, no dashboard) and closed on leaving; a Client passed in
    is left open for its owner.
    """
    distributed = _import_distributed()
    if isinstance(cluster, distributed.Client):
        yield cluster
        return
    kind, where = parse_cluster(str(cluster))
    if kind == "local":
        import dask

        with dask.config.set(LOCAL_SCHEDULER_CONFIG), distributed.LocalCluster(
            n_workers=int(where),
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # the scheduler's HTTP server: loopback, any port
        ) as local, distributed.Client(local) as client:
            yield client
        return
    try:
        client = distributed.Client(str(where), timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise PrepareError(f"cannot reach the Dask scheduler at {where}: {exc}") from None
    with client:
        yield client


def worker_threads(client: Any) -> int:
    """Threads over all workers (the cores the plan shares captures among); waits for a
    first worker for a while, since a scheduler may be up before its workers."""
    try:
        client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
    except TimeoutError:
        raise PrepareError(
            f"the Dask scheduler has no worker after {CONNECT_TIMEOUT_S} s; "
            "start some with `dask worker SCHEDULER_ADDRESS`"
        ) from None
    return max(sum(client.nthreads().values()), 1)


def _worker_view(stage: str) -> dict:
    """What a worker sees: its dmfnet, its working folder, whether the output is there."""
    return {"version": __version__, "cwd": os.getcwd(), "stage": os.path.isdir(stage)}


def check_workers(client: Any, stage: Path, relative_inputs: bool) -> None:
    """Every worker runs this dmfnet version and sees the output folder; relative capture
    paths are allowed only when every worker works in this process's folder."""
    views = client.run(_worker_view, str(stage))
    here = os.getcwd()
    for address, view in sorted(views.items()):
        if view["version"] != __version__:
            raise PrepareError(
                f"Dask worker {address} runs dmfnet {view['version']}, this is {__version__}; "
                "install the same version on every worker"
            )
        if not view["stage"]:
            raise PrepareError(
                f"Dask worker {address} cannot see {stage}: the output folder (and the "
                "captures) must be on storage every worker sees under the same path"
            )
        if relative_inputs and view["cwd"] != here:
            raise PrepareError(
                f"Dask worker {address} works in {view['cwd']}, not {here}: give the "
                "captures as absolute paths"
            )


def _cluster_task(task: _Task, settings: tuple, topic: str) -> CaptureResult:
    """One task on a worker: whatever an earlier try (on a worker that died) wrote of it is
    removed first, then the capture's flows are written as the process pool writes them."""
    from distributed import get_worker

    labeller, config, keep_unlabelled, out, addresses = settings
    worker = get_worker()
    _remove_parts(Path(out), task)
    return prepare_module.prepare_capture(
        task.index,
        task.path,
        task.size,
        out=out,
        labeller=labeller,
        config=config,
        keep_unlabelled=keep_unlabelled,
        progress=lambda step: worker.log_event(topic, step),
        ahead=False,
        buckets=task.buckets,
        addresses=addresses,
    )


def run_tasks(client: Any, tasks: list[_Task], settings: tuple, bar: Any) -> list[CaptureResult]:
    """Run the tasks on the cluster, most bytes a task first; the bar counts MB read over
    all workers and shows the tasks done. ``settings``: the labeller, flow config,
    ``keep_unlabelled``, unfinished folder and address policy every task shares."""
    distributed = _import_distributed()
    run = uuid.uuid4().hex[:12]
    topic = f"dmfnet-prepare-{run}"
    client.subscribe_topic(topic, lambda event: bar.update(int(event[1])))
    order = sorted(tasks, key=lambda t: -t.size * (t.buckets.hi - t.buckets.lo) / t.buckets.count)
    futures = {
        client.submit(
            _cluster_task,
            task,
            settings,  # with each task, not scattered: a worker's death would lose it
            topic,
            key=f"dmfnet-prepare-{run}-{task.index}-{task.buckets.lo}",
            priority=len(order) - rank,  # Dask runs higher priorities first
            pure=False,
        ): task
        for rank, task in enumerate(order)
    }
    results: list[CaptureResult] = []
    done, total = 0, len(futures)
    bar.set_postfix_str(f"tasks 0/{total}")
    try:
        for future in distributed.as_completed(list(futures)):
            task = futures.pop(future)
            try:
                results.append(future.result())
                # Let the scheduler forget it: a result lost with a worker that dies later
                # would otherwise be computed again, its parts rewritten under our feet.
                future.release()
            except distributed.KilledWorker:
                failed = CaptureResult(task.index, task.path, task.size, task.buckets)
                failed.problems.add(task.path, -1, WORKER_DIED)
                _remove_parts(Path(settings[3]), task)
                results.append(failed)
            except OutputError as exc:
                raise PrepareError(str(exc)) from None
            except Exception as exc:  # the task could not run at all (e.g. a broken worker)
                raise PrepareError(
                    f"{task.path}: the Dask task failed: {type(exc).__name__}: {exc}"
                ) from None
            done += 1
            bar.set_postfix_str(f"tasks {done}/{total}")
    except BaseException:
        client.cancel(list(futures))
        raise
    finally:
        client.unsubscribe_topic(topic)
    bar.update(max((bar.total or 0) - bar.n, 0))  # a lost task's bytes count as read
    return results
