"""The driver's connection to Ray: checked before anything is written, bounded in time, and
labelled so that the dashboard's job list names the run."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from urllib.parse import urlparse

from fuyu_ray import __version__
from fuyu_ray.job.spec import JobError, JobSpec

RAY_NAMESPACE = "fuyu_ray"
CONNECT_TIMEOUT_S = float(os.environ.get("FUYU_RAY_CONNECT_TIMEOUT_S", "60"))


def check_reachable(address: str, origin: str) -> None:
    """Fail in a second with one line, instead of Ray's long retry loop and traceback."""
    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname or not parsed.port:
        raise JobError(f"{origin} {address!r}: expected host:port or ray://host:port")
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=3).close()
    except OSError as exc:
        raise JobError(f"{origin} {address!r}: unreachable ({exc.strerror or exc})") from None


def check_token(address: str, origin: str) -> None:
    """A head with token authentication turns a driver without the token away, and ray.init then
    says only "Failed to connect": ask the GCS directly, which names the reason."""
    if "://" in address or address in ("auto", "local"):
        return
    verdict: list[str] = []

    def probe() -> None:
        try:
            from ray._raylet import GcsClient  # Ray loads once the input is known good: bad input answers at once

            GcsClient(address=address).internal_kv_get(b"fuyu_ray_probe", None, timeout=5)
        except Exception as exc:  # anything but a refused token is left to ray.init to report
            if type(exc).__name__ == "AuthenticationError":
                verdict.append(str(exc))

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout=10)
    if verdict:
        raise JobError(
            f"{origin} {address!r}: the cluster wants an authentication token and this driver has none; "
            "export RAY_AUTH_MODE=token, with the head's token in ~/.ray/auth_token or RAY_AUTH_TOKEN "
            "(`ray get-auth-token` on the head prints it)"
        )


def connect(address: str | None, origin: str, facts: dict[str, str] | None = None):
    """ray.init, bounded: against something that listens but is not Ray it would retry for minutes."""
    import ray  # Ray loads once the input is known good

    def give_up() -> None:
        print(
            f"fuyu_ray: {origin} {address!r}: no Ray cluster answered within {CONNECT_TIMEOUT_S} s",
            file=sys.stderr,
            flush=True,
        )
        os._exit(2)  # from a timer thread, the one way to leave a blocked ray.init; nothing is written yet

    watchdog = threading.Timer(CONNECT_TIMEOUT_S, give_up)
    watchdog.daemon = True
    if address:
        watchdog.start()
    try:
        return _init_ray(ray, address, facts or {})
    finally:
        watchdog.cancel()


def _init_ray(ray, address: str | None, facts: dict[str, str]):
    from ray.job_config import JobConfig  # Ray loads once the input is known good

    started = time.perf_counter()
    # The dashboard's job list shows this metadata beside the driver's command line.
    job_config = JobConfig(metadata=facts)
    name_submission(facts)
    # A fixed namespace lets operators (and the fault tests) find the grid's actors by name.
    if address:
        context = ray.init(address=address, namespace=RAY_NAMESPACE, log_to_driver=False, job_config=job_config)
        label_submission(dict(job_config.metadata))
    else:
        # "local": a new cluster of our own, never a `ray start` cluster found on this machine, which
        # may be another user's, or one that has since died and left its address file behind.
        context = ray.init(
            address="local",
            namespace=RAY_NAMESPACE,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            log_to_driver=False,
            job_config=job_config,
        )
    return context, time.perf_counter() - started


def job_facts(job: JobSpec, cells_total: int, cells_to_run: int, out: str) -> dict[str, str]:
    """What the dashboard's job list says of a run: Ray wants string values."""
    return {
        "job_name": job.name,
        "job_file": job.source_path,
        "cells_total": str(cells_total),
        "cells_to_run": str(cells_to_run),
        "out": out,
        "fuyu_ray_version": __version__,
    }


def name_submission(facts: dict[str, str], environ=os.environ) -> None:
    """Under `ray job submit`, Ray hands the driver the submission's metadata, with the submission
    id standing in as `job_name`, and that metadata wins over the driver's own when Ray starts.
    Put the run's facts in it, and its real name in place of the stand-in, before Ray reads it."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR  # Ray loads once the input is known good

    if RAY_JOB_CONFIG_JSON_ENV_VAR not in environ:
        return
    config = json.loads(environ[RAY_JOB_CONFIG_JSON_ENV_VAR])
    submitted = config.get("metadata") or {}
    metadata = {**facts, **submitted}
    if submitted.get("job_name") in (None, submitted.get("job_submission_id")):  # a stand-in, not a chosen name
        metadata["job_name"] = facts["job_name"]
    config["metadata"] = metadata
    environ[RAY_JOB_CONFIG_JSON_ENV_VAR] = json.dumps(config)


def label_submission(facts: dict[str, str]) -> None:
    """The dashboard lists a submission by its own record, which Ray fills from the driver's job only
    at times of its choosing: write the facts into that record as soon as the driver is up."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR  # Ray loads once the input is known good
    from ray.experimental import internal_kv  # Ray loads once the input is known good

    try:
        submission = (
            json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR, "{}")).get("metadata", {}).get("job_submission_id")
        )
        if not submission:
            return
        key = f"_ray_internal_job_info_{submission}"  # where Ray's job manager keeps a submission's record
        record = json.loads(internal_kv._internal_kv_get(key, namespace="job") or b"{}")
        if record:
            record["metadata"] = {**(record.get("metadata") or {}), **facts}
            internal_kv._internal_kv_put(key, json.dumps(record), overwrite=True, namespace="job")
    except Exception as exc:  # a label is not worth a run: Ray's internal layout may change
        print(
            f"fuyu_ray: could not label the job submission ({type(exc).__name__}: {exc})", file=sys.stderr, flush=True
        )


def dashboard_line(dashboard: str) -> str:
    """Ray 2.60 dashboards ask for the cluster's token before they show anything."""
    return (
        f"Ray dashboard: http://{dashboard} (it asks for a token: paste the output of `ray get-auth-token`,"
        " or of `cat ~/.ray/auth_token`; actors waiting in PENDING_CREATION are queued variants, not faults)"
    )
