#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/seeds/<target>/ from the real fixtures (tests/fixtures,
/work/shared/fixtures when present), the example config and the jobs written in the tests.
The committed corpus (fuzz/corpus/<target>/) is these seeds after a run, minimised with
`cargo fuzz cmin`; scripts/fuzz.sh regenerates the seeds when they are missing."""
import glob, hashlib, io, json, os, re, sys, tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "seeds")
FIXTURES = [os.path.join(ROOT, "tests", "fixtures"), "/work/shared/fixtures"]


def put(target, data, name=None):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    name = name or hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def fixtures():
    seen = {}
    for d in FIXTURES:
        for p in sorted(glob.glob(os.path.join(d, "*"))):
            b = os.path.basename(p)
            if b != "README.md" and os.path.isfile(p) and b not in seen:
                seen[b] = open(p, "rb").read()
    return seen


def rust_jsons(pred):
    """JSON objects written in the tests: raw strings r#"{…}"# and json!({…}) literals."""
    found = set()
    for f in glob.glob(os.path.join(ROOT, "tests", "it", "*.rs")) + glob.glob(
        os.path.join(ROOT, "src", "**", "*.rs"), recursive=True
    ):
        t = open(f, encoding="utf-8").read()
        cands = [m.group(1) for m in re.finditer(r'r#"(\{.*?\})"#', t)]
        for m in re.finditer(r"json!\((\{)", t):
            i, depth = m.start(1), 0
            for j in range(i, len(t)):
                depth += {"{": 1, "}": -1}.get(t[j], 0)
                if depth == 0:
                    cands.append(t[i : j + 1])
                    break
        for s in cands:
            try:
                o = json.loads(s)
            except ValueError:
                continue
            if isinstance(o, dict) and pred(o):
                found.add(json.dumps(o, separators=(",", ":")))
    return sorted(found)


# job / job_signed: flag byte + payload
jobs = rust_jsons(lambda o: "meta" in o and "event_type" not in o)
jobs += [
    '{"id":"t1","timestamp":1700000000,"meta":{"type":"process.list"}}',
    '{"id":"t2","timestamp":"1700000100","meta":{"type":"process.stop","args":{"pid":1234}}}',
    '{"id":"t3","meta":{"type":"process.signal","args":{"pid":99,"signal":"HUP"}}}',
    '{"id":"t4","meta":{"type":"service.update","args":{"name":"a","version":"1.2","url":"http://h/a.tgz","sha256":"00"}}}',
    '{"id":"t5","timestamp":-9223372036854775808,"meta":{"msg":"x"}}',
    '{"id":"t6","timestamp":1e308,"meta":{"msg":"x","timeout":"inf"}}',
]
for j in jobs:
    for flag in (0, 1, 2):
        put("job", bytes([flag]) + j.encode())
    put("job_signed", bytes([1]) + j.encode())
    put("job_signed", bytes([3]) + j.encode())
put("job_signed", b"\x00" + json.dumps({"signed": jobs[0], "sig": "00" * 32}).encode())
put("job_signed", b"\x00" + jobs[0].encode())
put("job_signed", b"\x05" + jobs[0].encode())

# config: the example config and the configs written in the tests
cfgs = rust_jsons(lambda o: "mqtt_host" in o or "topic" in o)
ex = os.path.join(ROOT, "examples", "config.json")
if os.path.exists(ex):
    cfgs.append(open(ex).read())
cfgs.append(
    '{"topic":"t","key":"k","mqtt_host":"h","port":"8883","tls":1,"job_secret":"s","job_types":["cmd"],'
    '"services":[{"name":"a","cmd":"./run","restart":"on-failure","heartbeat":true,"env":{"A":"1"}}]}'
)
for c in cfgs:
    put("config", c.encode())

# heartbeat: both SPEC forms
for hb in rust_jsons(lambda o: "process_name" in o) + [
    '{"process_name":"app","pid":4242,"run_command":"/usr/bin/app","version":{"major":1,"minor":2,"patch":3}}',
    '{"command":"heart_beat","process_name":"app","pid_of_process":4242}',
]:
    put("heartbeat", hb.encode())

# parsers: selector byte (index in fuzz_targets/parsers.rs PARSERS) + fixture text
SEL = {
    "iw-dev-info": 0, "iw-dev-": 0, "iw-link": 1, "iw-station": 2, "iw-scan": 3,
    "ubus-iwinfo-info": 4, "ubus-iwinfo-assoclist": 5, "ubus-iwinfo-scan": 6,
    "dhcp.leases": 8, "proc-loadavg": 10, "proc-meminfo": 11, "proc-net-route": 16,
}
for name, data in fixtures().items():
    for prefix, sel in SEL.items():
        if name.startswith(prefix):
            put("parsers", bytes([sel]) + data, f"{sel:02}-{name}")
            break
for sel, text in [
    (7, '{"radio0":{"up":true,"interfaces":[{"ifname":"wlan0"}]},"radio1":{"interfaces":[]}}'),
    (9, "35619.68 69466.25\n"),
    (12, "fe800000000000000211223344556677 02 40 20 80     eth0\n"
         "00000000000000000000000000000001 01 80 10 80       lo\n"),
    (13, "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 12 34 0 0 20 0 1 0 5678 "
         "1000000 250 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n"),
    (14, "cpu  1 2 3 4\nbtime 1700000000\nprocesses 42\n"),
    (15, "root:x:0:0:root:/root:/bin/sh\nnobody:*:65534:65534:nobody:/var:/bin/false\n"),
]:
    put("parsers", bytes([sel]) + text.encode(), f"{sel:02}-handmade")

# tar_path: entry lines (type byte, path, \0, link target)
for lines in [
    [b"5bin/", b"0bin/run", b"2lib\0bin", b"1hard\0bin/run", b"0./README"],
    [b"5a/", b"2a/up\0..", b"0a/b/c"],
    [b"xpax", b"Llong", b"0./", b"6fifo"],
]:
    put("tar_path", b"\n".join(lines))


# tar_unpack: real (uncompressed) tar streams
def tar(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, kind, extra in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1700000000
            if kind == "file":
                ti.size, ti.mode = len(extra), 0o755
                t.addfile(ti, io.BytesIO(extra))
            elif kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                t.addfile(ti)
            else:
                ti.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                ti.linkname = extra
                t.addfile(ti)
    return buf.getvalue().rstrip(b"\0") + b"\0" * 1024


put("tar_unpack", tar([("bin", "dir", None), ("bin/run", "file", b"#!/bin/sh\necho hi\n"),
                        ("lib", "sym", "bin"), ("run2", "hard", "bin/run")]))
put("tar_unpack", tar([("a", "dir", None), ("a/up", "sym", ".."), ("x", "file", b"x")]))
print("seeds in", OUT, {t: len(os.listdir(os.path.join(OUT, t))) for t in sorted(os.listdir(OUT))})
