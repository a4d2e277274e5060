"""A fleet's storage, on this machine: generated flows with Metaflow's S3 datastore and the
PostgreSQL record store.

The S3 side is moto's server (PyPI `moto[server]`) on 127.0.0.1, the record store a database on
the session's throwaway PostgreSQL cluster (conftest.py). Every AWS endpoint variable points at
the local server and the credentials are fake, so nothing here can reach a cloud endpoint. What a
Kubernetes or AWS Batch worker does differently is only where its steps run (README, "A fleet").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import test_metaflow_runner as conformance
from pg_cluster import Cluster, free_port

from qmcp.agentframework.models import AgentRole, ModelConfig, Topology, TopologyType
from qmcp.agentframework.runners import AsyncRunner, LocalRunner, MetaflowRunner, RunConfig
from qmcp.agentframework.store import Store

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
BUCKET = "qmcp-flows"
KINDS = ["pipeline", "ensemble"]  # linear steps, and a foreach with its join


@dataclass
class S3:
    endpoint: str
    env: dict[str, str]  # what a flow's processes need to use it

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def keys(self, prefix: str = "") -> list[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """moto's S3 server on a free loopback port, with one bucket, for this module."""
    server_bin = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if server_bin is None:
        pytest.fail("moto_server is not installed: pip install -e '.[dev]' (moto[server])")
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    server = subprocess.Popen(
        [server_bin, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "METAFLOW_DEFAULT_DATASTORE": "s3",
        "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{BUCKET}/metaflow",
        "METAFLOW_S3_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL": endpoint,  # any other AWS call boto3 makes stays local too
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    store = S3(endpoint, env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                store.client().create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield store
    finally:
        server.terminate()
        server.wait(20)
        log.close()


@dataclass
class Ran:
    topology: Topology
    agents: dict[str, Any]
    local: Any
    concurrent: Any
    flowed: Any
    local_keys: list[str]
    flow_keys: list[str]
    record: Any
    steps: dict[str, str]  # the flow step that answered each key (`Store.flow_steps`)


@dataclass
class Fleet:
    """What a fleet worker has: the shared database URL and the S3 datastore (`env`), plus the
    plugin functions; `root/metaflow` is the local Metaflow root, which must get no artifacts."""

    db_url: str
    root: Path
    env: dict[str, str]

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        with pytest.MonkeyPatch.context() as patch:
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN"):
                patch.delenv(name, raising=False)
            for name, value in self.env.items():
                patch.setenv(name, value)
            patch.chdir(self.root)
            yield


@pytest.fixture(scope="module")
def fleet(
    s3: S3, postgres_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("s3_flows")
    (root / "state").mkdir()
    db_url = postgres_cluster.create_database()
    tests = Path(__file__).parent
    env = {
        **s3.env,
        "USERNAME": os.environ.get("USERNAME", "qmcp-tests"),
        "QMCP_DATABASE_URL": db_url,
        "QMCP_TEST_STATE_DIR": str(root / "state"),
        "QMCP_PLUGINS": "metaflow_functions",
        "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)]),
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root / "metaflow"),
    }
    yield Fleet(db_url, root, env)
    postgres_cluster.drop_database(db_url)


@pytest.fixture(scope="module")
def flows(fleet: Fleet) -> dict[str, Ran]:
    db_url, root = fleet.db_url, fleet.root

    async def one(name: str) -> Ran:
        topology, agents = conformance.build(name)
        data = conformance.INPUT
        local = await LocalRunner(db_url=db_url).run(topology, agents, data)
        concurrent = await AsyncRunner(db_url=db_url, max_concurrent=4).run(topology, agents, data)
        flowed = await MetaflowRunner(output_dir=root / "flows", db_url=db_url).run(
            topology, agents, data
        )
        async with Store(db_url) as store:
            return Ran(
                topology,
                agents,
                local,
                concurrent,
                flowed,
                conformance.keys_of(await store.invocations(local.execution_id)),
                conformance.keys_of(await store.invocations(flowed.execution_id)),
                await store.get_execution(flowed.execution_id),
                await store.flow_steps(flowed.execution_id),
            )

    async def every() -> list[Ran]:
        return [await one(name) for name in KINDS]  # one flow at a time: 2 shared cores

    with fleet.applied():
        return dict(zip(KINDS, asyncio.run(every()), strict=True))


def test_the_steps_record_in_postgresql(fleet: Fleet, flows: dict[str, Ran]) -> None:
    """The flow's tasks wrote the invocations and the outcome into the PostgreSQL database the
    launching runner named (the steps' own `QMCP_DATABASE_URL`), not into any default."""
    assert fleet.db_url.startswith("postgresql+asyncpg://")
    for ran in flows.values():
        assert ran.record.runner_type == "metaflow" and ran.record.status == "completed"
        assert ran.record.invocation_count == len(ran.flow_keys) > 0
        assert ran.record.output == ran.flowed.output


@pytest.mark.parametrize("name", KINDS)
def test_every_runner_gives_the_same_output_with_s3_and_postgresql(
    name: str, flows: dict[str, Ran]
) -> None:
    ran = flows[name]
    assert ran.flowed.status == "completed", ran.flowed.error
    assert ran.flowed.output == ran.local.output == ran.concurrent.output
    assert ran.flow_keys == ran.local_keys
    assert sorted(ran.steps) == ran.flow_keys, "every key answered in a named step"


def test_the_artifacts_are_in_s3_not_on_the_local_disk(
    s3: S3, fleet: Fleet, flows: dict[str, Ran]
) -> None:
    for ran in flows.values():
        flow_class = _class_name(Path(ran.record.metaflow_flow_file))
        run_id = ran.record.metaflow_run_id
        assert run_id, "the launching process's Metaflow client found the run"
        stored = s3.keys(f"metaflow/{flow_class}/")
        assert any(f"/{run_id}/end/" in key for key in stored), stored[:20]
        assert any("/data/" in key for key in stored), "artifact blobs in the bucket"
    local = fleet.root / "metaflow"
    assert local.is_dir(), "Metaflow's local metadata is kept here"
    blobs = [p for p in local.rglob("*") if p.is_file() and "/data/" in p.as_posix()]
    assert blobs == [], blobs[:5]


def _class_name(flow_file: Path) -> str:
    import ast

    tree = ast.parse(flow_file.read_text("utf-8"))
    return next(n.name for n in tree.body if isinstance(n, ast.ClassDef))


def test_resume_with_s3_and_postgresql_runs_only_what_did_not_finish(fleet: Fleet) -> None:
    db_url, root = fleet.db_url, fleet.root
    state = root / "state"
    model = ModelConfig(provider="function", model="mf_fail_once")
    agents = {
        slot: conformance.agent(f"s3_{slot}", AgentRole.EXECUTOR, model)
        for slot in ("first", "second", "third")
    }
    topology = Topology(
        name="s3_resumable",
        topology_type=TopologyType.PIPELINE,
        config={"retry_failed_stages": False},
    )
    (state / "fail_slot").write_text("second")
    (state / "calls.log").unlink(missing_ok=True)
    runner = MetaflowRunner(
        output_dir=root / "flows", db_url=db_url, config=RunConfig(retry_on_failure=False)
    )

    async def scenario() -> tuple[Any, Any, Any]:
        failed = await runner.run(topology, agents, {"prompt": "go"})
        (state / "healed").write_text("yes")
        resumed = await runner.resume(failed.execution_id)
        local = await LocalRunner(db_url=db_url).run(topology, agents, {"prompt": "go"})
        return failed, resumed, local

    try:
        with fleet.applied():
            failed, resumed, local = asyncio.run(scenario())
    finally:
        (state / "healed").unlink(missing_ok=True)
        (state / "fail_slot").unlink(missing_ok=True)
    assert failed.status == "failed" and "injected failure in second" in (failed.error or "")
    assert resumed.status == "completed", resumed.error
    assert resumed.execution_id == failed.execution_id
    calls = [json.loads(line)["slot"] for line in (state / "calls.log").read_text().splitlines()]
    assert calls == ["first", "second", "second", "third", "first", "second", "third"], (
        "the resume asked only the failed stage and the one after it"
    )
    assert resumed.output == local.output
