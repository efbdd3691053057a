#!/usr/bin/env python3
"""A gRPC client of `databuild serve` that shares no code with databuild.

Stubs are generated here, at run time, by grpcio-tools from the project's `proto/` files, so this
exercises the wire protocol as any third party would see it. Driven by `tests/server/python.rs`,
which starts the server on a copy of `examples/basic` plus two jobs of its own:
`slow/N` (sleeps a minute) and `bad/N` (exits 1).

Usage: grpc_client.py --proto DIR --addr HOST:PORT --token TOKEN --socket PATH --out DIR
Prints one `ok: ...` line per check and `PYTHON GRPC CLIENT: N checks passed` at the end; any
failed check raises (exit 1).
"""

import argparse
import os
import queue
import subprocess
import sys
import threading
import time
import uuid

CALL_TIMEOUT = 60  # seconds; every call has a deadline, so the script never hangs
CHECKS = 0


def ok(what):
    global CHECKS
    CHECKS += 1
    print(f"ok: {what}", flush=True)


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    ok(what)


def generate(proto_dir, out_dir):
    """Runs grpcio-tools' protoc on the project's proto files."""
    os.makedirs(out_dir, exist_ok=True)
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}",
        f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
        "databuild.proto", "databuild_server.proto",
    ]
    subprocess.run(cmd, check=True)
    sys.path.insert(0, out_dir)


def expect_error(fn, code, what):
    """Calls fn, which must fail with `code`; returns the error."""
    import grpc
    try:
        fn()
    except grpc.RpcError as e:
        check(e.code() == code, f"{what}: {code.name} (got {e.code().name}: {e.details()})")
        return e
    raise AssertionError(f"{what}: expected {code.name}, the call succeeded")


def md(pairs, key):
    return [v for k, v in (pairs or ()) if k == key]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proto", required=True)
    ap.add_argument("--addr", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    generate(a.proto, a.out)
    import grpc
    import databuild_pb2 as pb
    import databuild_server_pb2 as spb
    import databuild_pb2_grpc as pb_grpc
    import databuild_server_pb2_grpc as spb_grpc

    ID_KEY = "databuild-build-request-id"
    auth = (("authorization", f"Bearer {a.token}"),)
    T = CALL_TIMEOUT

    def refs(*names):
        return [pb.PartitionRef(str=n) for n in names]

    channel = grpc.insecure_channel(a.addr)
    grpc.channel_ready_future(channel).result(timeout=T)
    svc = pb_grpc.DataBuildServiceStub(channel)
    ctl = spb_grpc.DataBuildControlStub(channel)

    def stream(since=0, follow=False, build="", timeout=T):
        return ctl.StreamEvents(
            spb.StreamEventsRequest(since_seq=since, follow=follow, build_request_id=build),
            timeout=timeout,
        )

    def request_status(ev):
        if ev.WhichOneof("event_type") == "build_request_event":
            return ev.build_request_event.status
        return None

    TERMINAL = {pb.BUILD_REQUEST_COMPLETED, pb.BUILD_REQUEST_FAILED, pb.BUILD_REQUEST_CANCELLED}

    # --- health and reflection
    try:
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        h = health_pb2_grpc.HealthStub(channel)
        for name in ("", "databuild.v1.DataBuildService", "databuild.v1.DataBuildControl"):
            r = h.Check(health_pb2.HealthCheckRequest(service=name), timeout=T)
            check(r.status == health_pb2.HealthCheckResponse.SERVING, f"health {name!r} SERVING")
    except ImportError:
        print("note: grpcio-health-checking is not installed; health not checked")
    try:
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
        rs = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = rs.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=T
        )
        names = {s.name for r in answers for s in r.list_services_response.service}
        want = {"databuild.v1.DataBuildService", "databuild.v1.DataBuildControl",
                "grpc.health.v1.Health"}
        check(want <= names, f"reflection lists {sorted(want)} (got {sorted(names)})")
        served = want | {"grpc.reflection.v1.ServerReflection",
                         "grpc.reflection.v1alpha.ServerReflection"}
        check(names <= served, f"reflection lists only served services ({sorted(names)})")
    except ImportError:
        print("note: grpcio-reflection is not installed; reflection not checked")

    # --- the token: every call that changes something needs it over TCP
    expect_error(lambda: svc.Build(pb.GraphBuildRequest(outputs=refs("sum/1")), timeout=T),
                 grpc.StatusCode.UNAUTHENTICATED, "Build without token")
    expect_error(lambda: svc.Build(pb.GraphBuildRequest(outputs=refs("sum/1")), timeout=T,
                                   metadata=(("authorization", "Bearer wrong"),)),
                 grpc.StatusCode.UNAUTHENTICATED, "Build with a wrong token")
    expect_error(lambda: ctl.SubmitBuild(spb.SubmitBuildRequest(outputs=refs("sum/1")), timeout=T),
                 grpc.StatusCode.UNAUTHENTICATED, "SubmitBuild without token")
    expect_error(lambda: ctl.CancelBuild(spb.CancelBuildRequest(build_request_id="x"), timeout=T),
                 grpc.StatusCode.UNAUTHENTICATED, "CancelBuild without token")
    expect_error(lambda: svc.Execute(pb.JobGraph(), timeout=T),
                 grpc.StatusCode.UNAUTHENTICATED, "Execute without token")
    seqs = [e.seq for e in stream()]
    check(seqs == [], f"nothing was recorded by refused calls (log has {len(seqs)} events)")

    # --- bad input: INVALID_ARGUMENT, nothing recorded
    expect_error(lambda: svc.Build(pb.GraphBuildRequest(outputs=refs("nobody/owns/this")),
                                   timeout=T, metadata=auth),
                 grpc.StatusCode.INVALID_ARGUMENT, "Build of an unknown ref")
    expect_error(lambda: ctl.SubmitBuild(spb.SubmitBuildRequest(outputs=refs("nobody/1")),
                                         timeout=T, metadata=auth),
                 grpc.StatusCode.INVALID_ARGUMENT, "SubmitBuild of an unknown ref")
    expect_error(lambda: svc.AnalyzeGraph(pb.GraphAnalyzeRequest(outputs=refs("nobody/1")),
                                          timeout=T),
                 grpc.StatusCode.INVALID_ARGUMENT, "AnalyzeGraph of an unknown ref")
    expect_error(lambda: svc.Build(pb.GraphBuildRequest(), timeout=T, metadata=auth),
                 grpc.StatusCode.INVALID_ARGUMENT, "Build of no ref")
    bogus = pb.JobGraph(
        label=pb.GraphLabel(label="basic"), outputs=refs("sum/1"),
        nodes=[pb.Task(job=pb.JobLabel(label="no_such_job"),
                       config=pb.JobConfig(outputs=refs("sum/1")))],
    )
    expect_error(lambda: svc.Execute(bogus, timeout=T, metadata=auth),
                 grpc.StatusCode.INVALID_ARGUMENT, "Execute of a graph naming an unknown job")
    check([e.seq for e in stream()] == [], "bad input recorded nothing")

    # --- AnalyzeGraph: the plan, nothing written
    g = svc.AnalyzeGraph(pb.GraphAnalyzeRequest(outputs=refs("sum/3")), timeout=T).graph
    jobs = sorted(t.job.label for t in g.nodes)
    check(jobs == ["generate_numbers", "sum_numbers"], f"AnalyzeGraph sum/3 plans {jobs}")
    check([o.str for o in g.outputs] == ["sum/3"], "AnalyzeGraph's outputs are the requested refs")
    check([e.seq for e in stream()] == [], "AnalyzeGraph recorded nothing")

    # --- Build: manifests for each requested partition, the request id in the metadata
    resp, call = svc.Build.with_call(pb.GraphBuildRequest(outputs=refs("sum/3", "sum/4")),
                                     timeout=T, metadata=auth)
    ids = md(call.initial_metadata(), ID_KEY)
    check(len(ids) == 1 and uuid.UUID(ids[0]), f"Build answers {ID_KEY} in initial metadata")
    b1 = ids[0]
    outs = sorted(o.str for m in resp.manifests for o in m.outputs)
    check(outs == ["sum/3", "sum/4"], f"Build returns a manifest per requested partition {outs}")
    runs = [m.job_run_id for m in resp.manifests]
    check(len(set(runs)) == len(runs) == 2 and all(runs), f"each run once, named ({runs})")
    check(all(m.task.job.label == "sum_numbers" and m.end_time >= m.start_time > 0
              for m in resp.manifests), "manifests name their task and times")
    check(sorted(i.outputs[0].str for m in resp.manifests for i in m.inputs)
          == ["numbers/3", "numbers/4"], "manifests carry their input manifests")

    evs = list(stream(build=b1))
    check(evs and all(e.event.build_request_id == b1 for e in evs),
          "StreamEvents filtered by request: only that request's events")
    statuses = [request_status(e.event) for e in evs if request_status(e.event)]
    check(statuses[0] == pb.BUILD_REQUEST_RECEIVED and statuses[-1] == pb.BUILD_REQUEST_COMPLETED,
          "the request went RECEIVED ... COMPLETED")

    # Again: nothing runs, the manifests are those of the runs that built them.
    resp2, call2 = svc.Build.with_call(pb.GraphBuildRequest(outputs=refs("sum/3", "sum/4")),
                                       timeout=T, metadata=auth)
    b2 = md(call2.initial_metadata(), ID_KEY)[0]
    check(b2 != b1, "a second Build is a new request")
    check(sorted(m.job_run_id for m in resp2.manifests) == sorted(runs),
          "an already-built partition's manifest is that of the run that built it")
    ran = [e for e in stream(build=b2)
           if e.event.WhichOneof("event_type") == "job_event"
           and e.event.job_event.status == pb.JOB_RUNNING]
    check(ran == [], "the second Build ran nothing")

    # --- Execute: an analyzed graph, run as is
    g5 = svc.AnalyzeGraph(pb.GraphAnalyzeRequest(outputs=refs("sum/5")), timeout=T).graph
    resp, call = svc.Execute.with_call(g5, timeout=T, metadata=auth)
    check(len(md(call.initial_metadata(), ID_KEY)) == 1, f"Execute answers {ID_KEY}")
    check(sorted(o.str for m in resp.manifests for o in m.outputs) == ["sum/5"],
          "Execute returns the manifest of its output")

    # --- a failing build: ABORTED, the id in the trailing metadata
    e = expect_error(lambda: svc.Build(pb.GraphBuildRequest(outputs=refs("bad/1")),
                                       timeout=T, metadata=auth),
                     grpc.StatusCode.ABORTED, "Build of a failing job")
    bad_id = md(e.trailing_metadata(), ID_KEY)
    check(len(bad_id) == 1, f"a failed Build's trailing metadata carries {ID_KEY}")
    check("FAILED" in e.details() and not e.details().startswith("error:"),
          f"the message is the CLI's, without `error: ` ({e.details()!r})")

    # --- CancelBuild: unknown id, ended request, a live one
    expect_error(lambda: ctl.CancelBuild(spb.CancelBuildRequest(build_request_id=str(uuid.uuid4())),
                                         timeout=T, metadata=auth),
                 grpc.StatusCode.NOT_FOUND, "CancelBuild of an unknown id")
    expect_error(lambda: ctl.CancelBuild(spb.CancelBuildRequest(build_request_id=b1),
                                         timeout=T, metadata=auth),
                 grpc.StatusCode.FAILED_PRECONDITION, "CancelBuild of an ended request")

    sub, call = ctl.SubmitBuild.with_call(spb.SubmitBuildRequest(outputs=refs("slow/1")),
                                          timeout=T, metadata=auth)
    slow = sub.build_request_id
    check(md(call.initial_metadata(), ID_KEY) == [slow], "SubmitBuild answers the id, also in metadata")
    # Follow the request from the seq SubmitBuild gave: its RECEIVED comes first.
    followed = stream(since=sub.since_seq, follow=True, build=slow)
    seen = []
    for e in followed:
        seen.append(e)
        ev = e.event
        if ev.WhichOneof("event_type") == "job_event" and ev.job_event.status == pb.JOB_RUNNING:
            break
    check(request_status(seen[0].event) == pb.BUILD_REQUEST_RECEIVED,
          f"StreamEvents from SubmitBuild's since_seq {sub.since_seq} starts at RECEIVED")
    ctl.CancelBuild(spb.CancelBuildRequest(build_request_id=slow), timeout=T, metadata=auth)
    ok("CancelBuild of a running request")
    for e in followed:
        seen.append(e)
        if request_status(e.event) in TERMINAL:
            break
    followed.cancel()
    check(request_status(seen[-1].event) == pb.BUILD_REQUEST_CANCELLED,
          "the followed stream shows the request CANCELLED")
    s = [e.seq for e in seen]
    check(s == sorted(set(s)), "a filtered stream's seqs increase, each once")

    # A Build cancelled by another client: CANCELLED, with the id.
    results = queue.Queue()

    def blocking_build():
        try:
            svc.Build(pb.GraphBuildRequest(outputs=refs("slow/2")), timeout=T, metadata=auth)
            results.put(None)
        except grpc.RpcError as err:
            results.put(err)

    th = threading.Thread(target=blocking_build)
    th.start()
    live = stream(follow=True, since=1)
    victim = None
    for e in live:
        ev = e.event
        if (ev.WhichOneof("event_type") == "job_event" and ev.job_event.status == pb.JOB_RUNNING
                and ev.job_event.target_partitions[0].str == "slow/2"):
            victim = ev.build_request_id
            break
    live.cancel()
    ctl.CancelBuild(spb.CancelBuildRequest(build_request_id=victim), timeout=T, metadata=auth)
    th.join(T)
    err = results.get(timeout=T)
    check(err is not None and err.code() == grpc.StatusCode.CANCELLED,
          f"a Build cancelled by another client ends CANCELLED ({err and err.code().name})")
    check(md(err.trailing_metadata(), ID_KEY) == [victim], "... with its id in trailing metadata")

    # --- StreamEvents: the whole log, gapless, in order; since_seq; follow sees new events
    all_seqs = [e.seq for e in stream()]
    check(all_seqs == list(range(1, len(all_seqs) + 1)),
          f"StreamEvents from 0: seqs 1..{len(all_seqs)} gapless and in order")
    check([e.seq for e in stream(since=1)] == all_seqs, "since_seq 1 is the same as 0")
    mid = len(all_seqs) // 2
    check([e.seq for e in stream(since=mid)] == all_seqs[mid - 1:],
          f"since_seq {mid} starts exactly there")
    check(list(stream(since=len(all_seqs) + 1)) == [], "since_seq past the end: nothing")

    tail = stream(since=len(all_seqs) + 1, follow=True)
    first_new = {}

    def read_tail():
        for e in tail:
            first_new.setdefault("seq", e.seq)
            if request_status(e.event) in TERMINAL:
                first_new["end"] = e.seq
                break

    tt = threading.Thread(target=read_tail)
    tt.start()
    time.sleep(0.2)
    svc.Build(pb.GraphBuildRequest(outputs=refs("sum/7")), timeout=T, metadata=auth)
    tt.join(T)
    tail.cancel()
    check(first_new.get("seq") == len(all_seqs) + 1 and "end" in first_new,
          f"a following stream sees the next event ({first_new}) and the request's end")

    # --- the Unix socket: no token needed; grpcio needs an authority for it
    uchan = grpc.insecure_channel(f"unix:{a.socket}",
                                  options=(("grpc.default_authority", "localhost"),))
    grpc.channel_ready_future(uchan).result(timeout=T)
    usvc = pb_grpc.DataBuildServiceStub(uchan)
    uctl = spb_grpc.DataBuildControlStub(uchan)
    resp, call = usvc.Build.with_call(pb.GraphBuildRequest(outputs=refs("sum/8")), timeout=T)
    check(sorted(o.str for m in resp.manifests for o in m.outputs) == ["sum/8"],
          "Build over the Unix socket, without a token")
    sub = uctl.SubmitBuild(spb.SubmitBuildRequest(outputs=refs("numbers/9")), timeout=T)
    followed = uctl.StreamEvents(
        spb.StreamEventsRequest(since_seq=sub.since_seq, follow=True,
                                build_request_id=sub.build_request_id), timeout=T)
    ends = []
    for e in followed:
        if request_status(e.event) in TERMINAL:
            ends.append(request_status(e.event))
            break
    followed.cancel()
    check(ends[:1] == [pb.BUILD_REQUEST_COMPLETED], "SubmitBuild + StreamEvents over the socket")
    uchan.close()
    channel.close()

    print(f"PYTHON GRPC CLIENT: {CHECKS} checks passed", flush=True)


if __name__ == "__main__":
    main()
