"""TEST HARNESS: the whole stack as operators run it, for end-to-end tests (and the browser test).

DemoStack (embedded PostgreSQL with the sample database and Dagster's storage, the loopback S3/B2
doubles as processes) plus `dagster-webserver` and `dagster-daemon` as real subprocesses on a
Postgres-backed instance. Everything is driven the way an operator drives it: GraphQL (what the UI
sends), the `dagster` and `tenant-backup` CLIs, and fault injection over the doubles' HTTP control.

    stack = DagsterStack(Path("/tmp/e2e")).start()
    stack.graphql("{ version }")
    stack.stop()

Why this module is long: one class, the stack's life cycle and the GraphQL queries the tests read it
back with; split, every e2e test would import three modules to drive one stack.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCATION_NAME = "tenant_backup"  # workspace.yaml
REPOSITORY_NAME = "__repository__"
ASSETS = ("tenant_archive", "local_copy", "r2_copy", "b2_copy")
CHECKS = {
    "tenant_archive": ("isolation", "restore_drill"),
    "local_copy": ("checksum", "integrity"),
    "r2_copy": ("checksum", "integrity"),
    "b2_copy": ("checksum", "integrity"),
}
# Runs in e2e tests execute their steps in the run worker: a process per step costs seconds of
# start-up each on a 2-core CI machine, and the steps themselves are what is under test.
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")

RUN_FIELDS = "runId status jobName startTime endTime tags { key value }"


class GraphQLError(RuntimeError):
    pass


def _script(name: str) -> str:
    """A console script of this interpreter's environment (a venv's bin need not be on PATH)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found beside {sys.executable} nor on PATH")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post_json(url: str, payload: dict | None, method: str = "POST", timeout: float = 60) -> dict:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body = resp.read()
    return json.loads(body) if body else {}


class DagsterStack:
    def __init__(
        self,
        directory: Path,
        *,
        active: int = 3,
        suspended: int = 1,
        rows: int = 20,
        extra_env: dict[str, str] | None = None,
    ):
        self.directory = Path(directory).resolve()
        self.active, self.suspended, self.rows = active, suspended, rows
        self.extra_env = extra_env or {}
        self.demo = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tenants = []  # TenantInfo, creation order
        self.env: dict[str, str] = {}

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, timeout: float = 180, *, tuned_storage: bool = False) -> "DagsterStack":
        from ..demo import DemoStack, batch_workers, instance_yaml
        from ..sample.generate import add_tenants

        def populate(db):
            self.tenants = add_tenants(db, self.active, rows=self.rows, status="ACTIVE")
            self.tenants += add_tenants(db, self.suspended, rows=self.rows, status="SUSPENDED")

        try:
            self.demo = DemoStack(self.directory, populate=populate, server_processes=True, tuned_storage=tuned_storage)
            url = f"postgresql+psycopg2://postgres@/dagster?host={self.demo.server.socket_dir}"
            self.env = {
                **self.demo.env,
                "TENANT_BACKUP_RETRIES": "1",
                "TENANT_BACKUP_RETRY_DELAY_S": "0",
                "TENANT_BACKUP_STORAGE_ATTEMPTS": "2",
                "TENANT_BACKUP_WORKERS": "2",
                "TENANT_BACKUP_REGISTRY_SYNC_S": "5",  # new tenants become partitions within seconds
                "TENANT_BACKUP_UI_URL": self.url,
                **self.extra_env,
            }
            os.environ.update(self.env)
            runs = batch_workers(self.env)  # the run queue runs as many at once as the batch has workers
            (self.demo.home / "dagster.yaml").write_text(
                instance_yaml(url, max_concurrent_runs=runs, monitoring_poll_s=5, dequeue_interval_s=1)
            )
            self._spawn(
                "webserver",
                [_script("dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)],
            )
            self._spawn("daemon", [_script("dagster-daemon"), "run", "-w", "workspace.yaml"])
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.directory / f"{name}.log", "ab")
        # Own process group: stop() signals the whole tree (code servers, run workers), no orphans.
        self.procs[name] = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}: see {self.directory / (name + '.log')}")
            try:
                data = self.graphql("""{ workspaceOrError { __typename ... on Workspace { locationEntries {
                    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }""")
                entries = data["workspaceOrError"].get("locationEntries") or []
                entry = next((e for e in entries if e["name"] == LOCATION_NAME), None)
                if entry and entry["loadStatus"] == "LOADED":
                    loaded = entry["locationOrLoadError"] or {}
                    if loaded.get("__typename") == "PythonError":
                        raise RuntimeError(f"code location failed to load: {loaded['message']}")
                    if self._daemon_alive():
                        return
                last = entry
            except (OSError, GraphQLError) as exc:
                last = exc
            time.sleep(1)
        raise TimeoutError(f"stack not ready in {timeout}s: {last}")

    def _daemon_alive(self) -> bool:
        data = self.graphql("{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }")
        statuses = data["instance"]["daemonHealth"]["allDaemonStatuses"]
        wanted = {"SCHEDULER", "SENSOR", "QUEUED_RUN_COORDINATOR", "BACKFILL"}
        return wanted <= {s["daemonType"] for s in statuses if s["healthy"]}

    def stop(self, timeout: float = 20) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            try:  # whatever is left of the group (run workers, code servers)
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        if self.demo is not None:
            self.demo.stop()
            self.demo.server.stop()
            self.demo = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- convenience -------------------------------------------------------------------------------
    @property
    def active_tenants(self) -> list[str]:
        return [t.id for t in self.tenants if t.status == "ACTIVE"]

    @property
    def inactive_tenants(self) -> list[str]:
        return [t.id for t in self.tenants if t.status != "ACTIVE"]

    @property
    def work_dir(self) -> Path:
        return Path(self.env["TENANT_BACKUP_WORK_DIR"])

    @property
    def db(self):
        return self.demo.db

    @property
    def admin_dsn(self) -> str:
        return self.demo.server.admin_dsn()

    def log_tail(self, name: str, chars: int = 4000) -> str:
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def cli(self, *argv: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        """A command run as an operator would, with the stack's environment, from the repo root."""
        proc = subprocess.run(
            list(argv), cwd=REPO_ROOT, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{argv} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
            )
        return proc

    # -- faults ------------------------------------------------------------------------------------
    def _faults_url(self, kind: str) -> str:
        base = self.env["R2_ENDPOINT_URL"] if kind == "s3" else self.env["B2_REALM"]
        return base.rstrip("/") + "/__faults__"

    def s3_faults(self, **kw) -> dict:
        """Set faults on the S3 (R2) double; no arguments clears them. Returns the state."""
        return (
            _post_json(self._faults_url("s3"), kw, "POST") if kw else _post_json(self._faults_url("s3"), None, "DELETE")
        )

    def b2_faults(self, **kw) -> dict:
        return (
            _post_json(self._faults_url("b2"), kw, "POST") if kw else _post_json(self._faults_url("b2"), None, "DELETE")
        )

    def fault_state(self, kind: str) -> dict:
        return _post_json(self._faults_url(kind), None, "GET")

    # -- GraphQL -----------------------------------------------------------------------------------
    def graphql(self, query: str, variables: dict | None = None, timeout: float = 120) -> dict:
        out = _post_json(f"{self.url}/graphql", {"query": query, "variables": variables or {}}, timeout=timeout)
        if out.get("errors"):
            raise GraphQLError(json.dumps(out["errors"])[:2000])
        return out["data"]

    def _job_selector(self, job: str) -> dict:
        return {"repositoryLocationName": LOCATION_NAME, "repositoryName": REPOSITORY_NAME, "jobName": job}

    @staticmethod
    def _launched(result: dict, what: str) -> str:
        if result.get("__typename") != "LaunchRunSuccess":
            raise GraphQLError(f"{what}: {json.dumps(result)[:2000]}")
        return result["run"]["runId"]

    def launch_run(
        self,
        job: str,
        *,
        run_config: dict | None = None,
        tags: dict | None = None,
        partition: str | None = None,
        assets: list[str] | None = None,
        asset_checks: list[tuple[str, str]] | None = None,
    ) -> str:
        """launchRun, as the UI's launchpad does. The QueuedRunCoordinator queues it; the daemon starts it.
        `assets` / `asset_checks` ((asset, check) pairs) run a subset of an asset job."""
        tags = dict(tags or {})
        if partition is not None:
            tags.setdefault("dagster/partition", partition)
            tags.setdefault("tenant_backup/tenant", partition)
        selector = self._job_selector(job)
        if assets is not None or asset_checks is not None:
            selector["assetSelection"] = [{"path": [a]} for a in assets or []]
            selector["assetCheckSelection"] = [{"assetKey": {"path": [a]}, "name": c} for a, c in asset_checks or []]
        params = {
            "selector": selector,
            "runConfigData": run_config or {},
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        }
        data = self.graphql(
            """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
            ... on LaunchRunSuccess { run { runId } } ... on PythonError { message stack }
            ... on RunConfigValidationInvalid { errors { message } } ... on InvalidSubsetError { message } } }""",
            {"p": params},
        )
        return self._launched(data["launchRun"], f"launchRun {job}")

    def reexecute(self, run_id: str, strategy: str = "FROM_FAILURE") -> str:
        data = self.graphql(
            """mutation($p: ReexecutionParams!) { launchPipelineReexecution(reexecutionParams: $p) {
            __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message stack } } }""",
            {"p": {"parentRunId": run_id, "strategy": strategy}},
        )
        return self._launched(data["launchPipelineReexecution"], f"re-execute {run_id}")

    def schedule_dry_run(self, schedule: str, timestamp: float | None = None) -> list[dict]:
        """The UI's "Test schedule": the schedule evaluated by the code server; its run requests."""
        data = self.graphql(
            """mutation($s: ScheduleSelector!, $t: Float) { scheduleDryRun(selectorData: $s, timestamp: $t) {
            __typename ... on DryRunInstigationTick { evaluationResult { skipReason error { message }
              runRequests { runKey jobName runConfigYaml tags { key value } } } }
            ... on PythonError { message stack } } }""",
            {
                "s": {
                    "repositoryLocationName": LOCATION_NAME,
                    "repositoryName": REPOSITORY_NAME,
                    "scheduleName": schedule,
                },
                "t": timestamp or time.time(),
            },
        )
        result = data["scheduleDryRun"]
        if result["__typename"] != "DryRunInstigationTick":
            raise GraphQLError(json.dumps(result)[:2000])
        evaluation = result["evaluationResult"]
        if evaluation.get("error"):
            raise GraphQLError(evaluation["error"]["message"])
        return evaluation["runRequests"] or []

    def launch_backfill(
        self, assets: list[str], partitions: list[str], *, run_config: dict | None = None, tags: dict | None = None
    ) -> str:
        """launchPartitionBackfill of assets × partitions: the daemon's backfill loop launches the runs."""
        params = {
            "assetSelection": [{"path": [a]} for a in assets],
            "partitionNames": partitions,
            "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
        }
        if run_config is not None:
            params["runConfigData"] = run_config
        data = self.graphql(
            """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
            __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message stack }
            ... on PartitionSetNotFoundError { message } ... on InvalidStepError { invalidStepKey }
            ... on InvalidOutputError { stepKey invalidOutputName } } }""",
            {"p": params},
        )
        result = data["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise GraphQLError(json.dumps(result)[:2000])
        return result["backfillId"]

    def backfill(self, backfill_id: str) -> dict:
        return self.graphql(
            """query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename
            ... on PartitionBackfill { id status runs(limit: 100) { runId status tags { key value } } } } }""",
            {"id": backfill_id},
        )["partitionBackfillOrError"]

    def wait_for_backfill(self, backfill_id: str, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            bf = self.backfill(backfill_id)
            runs = bf.get("runs") or []
            if bf.get("status") in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED") and all(
                r["status"] in FINISHED for r in runs
            ):
                return bf
            if time.monotonic() > deadline:
                raise TimeoutError(f"backfill {backfill_id} not done in {timeout}s: {bf}\n{self.log_tail('daemon')}")
            time.sleep(2)

    def runs(self, *, run_ids: list[str] | None = None, job: str | None = None, limit: int = 200) -> list[dict]:
        flt = {}
        if run_ids is not None:
            flt["runIds"] = run_ids
        if job is not None:
            flt["pipelineName"] = job
        data = self.graphql(
            f"""query($f: RunsFilter, $l: Int) {{ runsOrError(filter: $f, limit: $l) {{
            __typename ... on Runs {{ results {{ {RUN_FIELDS} }} }} }} }}""",
            {"f": flt, "l": limit},
        )
        return data["runsOrError"]["results"]

    def wait_for_runs(
        self,
        predicate: Callable[[list[dict]], bool] | None = None,
        *,
        run_ids: list[str] | None = None,
        job: str | None = None,
        timeout: float = 240,
    ) -> list[dict]:
        """Poll the runs (filtered by ids or job) until predicate(runs) holds; default: all finished."""
        predicate = predicate or (lambda runs: bool(runs) and all(r["status"] in FINISHED for r in runs))
        deadline = time.monotonic() + timeout
        while True:
            runs = self.runs(run_ids=run_ids, job=job)
            if predicate(runs):
                return runs
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"runs not as expected in {timeout}s: {[(r['runId'][:8], r['status']) for r in runs]}"
                    f"\n--- daemon log ---\n{self.log_tail('daemon')}"
                )
            time.sleep(1)

    def wait_for_run(self, run_id: str, timeout: float = 240) -> dict:
        return self.wait_for_runs(run_ids=[run_id], timeout=timeout)[0]

    def run_steps(self, run_id: str) -> dict[str, str]:
        """step key -> status (SUCCESS, FAILED, SKIPPED, ...) of one run."""
        data = self.graphql(
            """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run {
            stepStats { stepKey status } } } }""",
            {"id": run_id},
        )
        return {s["stepKey"]: s["status"] for s in data["runOrError"]["stepStats"]}

    def run_logs(self, run_id: str, limit: int = 2000) -> list[dict]:
        data = self.graphql(
            """query($id: ID!, $l: Int) { logsForRun(runId: $id, limit: $l) { __typename
            ... on EventConnection { events { __typename ... on MessageEvent { message stepKey level } } } } }""",
            {"id": run_id, "l": limit},
        )
        return data["logsForRun"].get("events") or []

    def materializations(self, asset: str, partitions: list[str] | None = None) -> list[dict]:
        """Materialization events of an asset (optionally some partitions), newest first."""
        data = self.graphql(
            """query($k: AssetKeyInput!, $p: [String!]) { assetOrError(assetKey: $k) { __typename
            ... on Asset { assetMaterializations(partitions: $p) { partition runId timestamp } } } }""",
            {"k": {"path": [asset]}, "p": partitions},
        )
        result = data["assetOrError"]
        return result.get("assetMaterializations") or [] if result["__typename"] == "Asset" else []

    def materialized_partitions(self, asset: str) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for event in self.materializations(asset):
            out.setdefault(event["partition"], []).append(event)
        return out

    def check_executions(self, asset: str, check: str, partition: str | None = None, limit: int = 100) -> list[dict]:
        """Executions of one asset check (newest first): status, partition, run and evaluation."""
        data = self.graphql(
            """query($k: AssetKeyInput!, $c: String!, $p: String, $l: Int!) {
            assetCheckExecutions(assetKey: $k, checkName: $c, partition: $p, limit: $l) {
              runId status partition evaluation { success severity partition } } }""",
            {"k": {"path": [asset]}, "c": check, "p": partition, "l": limit},
        )
        return data["assetCheckExecutions"]

    def latest_checks(self, partition: str) -> dict[tuple[str, str], dict]:
        """(asset, check) -> the latest execution for that partition (missing if never run)."""
        out = {}
        for asset, checks in CHECKS.items():
            for check in checks:
                executions = self.check_executions(asset, check, partition, limit=1)
                if executions:
                    out[(asset, check)] = executions[0]
        return out

    def add_partitions(self, tenant_ids: list[str]) -> None:
        for tenant_id in tenant_ids:
            data = self.graphql(
                """mutation($r: RepositorySelector!, $n: String!, $k: String!) {
                addDynamicPartition(repositorySelector: $r, partitionsDefName: $n, partitionKey: $k) { __typename
                ... on PythonError { message } ... on UnauthorizedError { message } } }""",
                {
                    "r": {"repositoryLocationName": LOCATION_NAME, "repositoryName": REPOSITORY_NAME},
                    "n": "tenants",
                    "k": tenant_id,
                },
            )
            kind = data["addDynamicPartition"]["__typename"]
            if kind not in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
                raise GraphQLError(json.dumps(data)[:2000])

    def partition_keys(self) -> list[str]:
        from dagster import DagsterInstance  # the instance is the source of truth for dynamic partitions

        with DagsterInstance.get() as instance:
            return list(instance.get_dynamic_partitions("tenants"))

    # -- results outside Dagster -------------------------------------------------------------------
    def alerts(self) -> list[dict]:
        path = self.work_dir / "alerts.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_for_alert(self, predicate: Callable[[dict], bool], timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            found = [a for a in self.alerts() if predicate(a)]
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching alert in {timeout}s; alerts: {self.alerts()}")
            time.sleep(1)

    def locations(self) -> dict:
        """The configured locations, built from the stack's environment (no retries: read-only probes)."""
        from ..core.locations import locations_from_env

        return locations_from_env(["local", "r2", "b2"], {**os.environ, **self.env}, retry=False)


def dump_processes(tenant_id: str):
    """Running pg_dump processes of one tenant (psutil). The run worker is a process the code server
    spawned (its command line does not name the run); the dump is found by the tenant it is scoped
    to (PGOPTIONS app.current_tenant=<id>), and its parent is the process running the step."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            if proc.info["name"] != "pg_dump" and not any("pg_dump" in a for a in (proc.info["cmdline"] or [])[:1]):
                continue
            env = proc.environ()
        except psutil.Error:
            continue
        if tenant_id in env.get("PGOPTIONS", "") or tenant_id in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def kill_tree(proc) -> None:
    """SIGKILL a process and every descendant, like the OOM killer taking a container. The process
    first: killed after its children, it could see them die and clean up before its own signal lands
    (on a loaded machine the gap between two kills is long enough; the e2e kill test once saw it)."""
    import psutil

    try:
        victims = [proc] + proc.children(recursive=True)  # listed before any dies: none re-parented yet
    except psutil.Error:
        victims = [proc]
    for victim in victims:
        try:
            victim.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


if __name__ == "__main__":  # manual use: python -m backup_assets.testing.dagster_stack DIR
    stack = DagsterStack(Path(sys.argv[1] if len(sys.argv) > 1 else ".e2e-stack")).start()
    print(f"UI on {stack.url}; Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        stack.stop()
