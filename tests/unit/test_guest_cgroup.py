"""The guest cgroup read on the host (kata_py/guest_cgroup.py): runc's
`events --stats` shape and the v1/v2 files of the host's cgroup view, from
cgroup v2 files as a guest kernel writes them."""

from __future__ import annotations

from kata_py.agent.cgroups import cpu_weight_from_shares
from kata_py.fastcli import go_dumps
from kata_py.guest_cgroup import U64_MAX, V1_NO_LIMIT, GuestCgroup, render, runc_stats

# A container with memory 256 MiB + 64 MiB swap, 0.5 CPU, shares 512, cpus
# 0-1, pids 64, a 2 MiB hugetlb limit and reads on one disk.
FILES = {
    "memory.current": "52000000\n", "memory.peak": "60000000\n", "memory.max": "268435456\n",
    "memory.low": "0\n", "memory.swap.current": "4096\n", "memory.swap.max": "67108864\n",
    "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
    "memory.stat": "anon 2000000\nfile 49000000\nkernel 1000000\nshmem 8192\n"
                   "file_mapped 4096\nfile_dirty 0\nfile_writeback 0\nanon_thp 0\n"
                   "inactive_anon 1000000\nactive_anon 1000000\ninactive_file 40000000\n"
                   "active_file 9000000\nunevictable 0\npgfault 1200\npgmajfault 3\n",
    "cpu.max": "50000 100000\n", "cpu.weight": f"{cpu_weight_from_shares(512)}\n",
    "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n"
                "nr_periods 40\nnr_throttled 7\nthrottled_usec 1500\n",
    "cpuset.cpus": "0-1\n", "cpuset.mems": "\n", "cpuset.cpus.effective": "0-1\n",
    "cpuset.mems.effective": "0\n",
    "pids.current": "3\n", "pids.max": "64\n", "pids.events": "max 2\n",
    "io.stat": "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
    "io.max": "254:0 rbps=1048576 wbps=max riops=max wiops=max\n",
    "hugetlb.2MB.max": "4194304\n", "hugetlb.2MB.current": "2097152\n",
    "hugetlb.2MB.events": "max 1\n", "hugetlb.2MB.rsvd.max": "max\n",
    "hugetlb.2MB.rsvd.current": "0\n", "hugetlb.2MB.events.local": "max 1\n",
}
GUEST = GuestCgroup(FILES, cpu_shares=512)


def test_v1_memory_is_the_guest_limit_usage_peak_failures_and_swap() -> None:
    f = render("memory", GUEST)
    assert f["memory.limit_in_bytes"] == "268435456\n"
    assert f["memory.usage_in_bytes"] == "52000000\n"
    assert f["memory.max_usage_in_bytes"] == "60000000\n"      # memory.peak
    assert f["memory.failcnt"] == "3\n"                         # memory.events max
    assert f["memory.soft_limit_in_bytes"] == f"{V1_NO_LIMIT}\n"
    assert f["memory.memsw.limit_in_bytes"] == f"{268435456 + 67108864}\n"   # OCI memory.swap
    assert f["memory.memsw.usage_in_bytes"] == "52004096\n"
    assert "oom_kill 1" in f["memory.oom_control"]
    stat = dict(line.split() for line in f["memory.stat"].splitlines())
    assert (stat["cache"], stat["rss"], stat["total_rss"]) == ("49000000", "2000000", "2000000")
    assert stat["hierarchical_memory_limit"] == "268435456"
    assert stat["swap"] == "4096"


def test_v1_cpu_is_quota_period_and_the_shares_that_were_asked_for() -> None:
    f = render("cpu", GUEST)
    assert (f["cpu.cfs_quota_us"], f["cpu.cfs_period_us"]) == ("50000\n", "100000\n")
    assert f["cpu.shares"] == "512\n"             # not the lossy inverse of cpu.weight
    stat = dict(line.split() for line in f["cpu.stat"].splitlines())
    assert stat == {"nr_periods": "40", "nr_throttled": "7", "throttled_time": "1500000"}
    acct = render("cpuacct", GUEST)
    assert (acct["cpuacct.usage"], acct["cpuacct.usage_sys"]) == ("2500000000\n", "500000000\n")


def test_v1_shares_without_a_record_are_the_defaults_or_converted_back() -> None:
    assert GuestCgroup({"cpu.weight": "100\n"}).v1_shares() == 1024
    assert GuestCgroup({}).v1_shares() == 1024
    assert GuestCgroup({"cpu.max": "max 100000\n"}, 0) .cpu_max() == (None, 100000)
    # a weight written through linux.resources.unified: the smallest shares giving it
    for weight in (1, 39, 200, 10000):
        shares = GuestCgroup({"cpu.weight": f"{weight}\n"}).v1_shares()
        assert cpu_weight_from_shares(shares) == weight
        assert cpu_weight_from_shares(shares - 1) != weight or shares == 2
    assert render("cpu", GuestCgroup({}))["cpu.cfs_quota_us"] == "-1\n"


def test_v1_cpuset_pids_hugetlb_and_blkio() -> None:
    cpuset = render("cpuset", GUEST)
    assert cpuset["cpuset.cpus"] == "0-1\n"
    assert cpuset["cpuset.mems"] == "0\n"            # unset: the effective set, as v1 shows
    assert cpuset["cpuset.effective_mems"] == "0\n"
    pids = render("pids", GUEST)
    assert (pids["pids.max"], pids["pids.current"], pids["pids.events"]) == \
        ("64\n", "3\n", "max 2\n")
    assert render("pids", GuestCgroup({}))["pids.max"] == "max\n"
    huge = render("hugetlb", GUEST)
    assert huge["hugetlb.2MB.limit_in_bytes"] == "4194304\n"
    assert huge["hugetlb.2MB.usage_in_bytes"] == "2097152\n"
    assert huge["hugetlb.2MB.failcnt"] == "1\n"
    assert huge["hugetlb.2MB.rsvd.limit_in_bytes"] == f"{V1_NO_LIMIT}\n"
    assert "hugetlb.2MB.max_usage_in_bytes" not in huge     # v2 keeps no hugetlb peak
    blkio = render("blkio", GUEST)
    rows = [line.split() for line in blkio["blkio.throttle.io_service_bytes_recursive"]
            .splitlines()]
    assert ["254:0", "Read", "4096"] in rows and ["254:0", "Write", "8192"] in rows
    assert rows[-1] == ["Total", "12288"]          # "MAJ:MIN Op Value" rows, then the sum
    assert ["254:0", "Write", "2"] in [line.split() for line in
                                       blkio["blkio.io_serviced_recursive"].splitlines()]
    assert blkio["blkio.throttle.read_bps_device"] == "254:0 1048576\n"
    assert blkio["blkio.throttle.write_bps_device"] == ""


def test_v2_is_the_guest_files_as_they_are() -> None:
    assert render("v2", GUEST) == FILES


def test_events_stats_are_runcs_stats_shape() -> None:
    """types.Stats: struct order, omitempty zeros gone, "max" as 2^64-1,
    memory.stat's file as the cache, swap as memory+swap, map keys sorted."""
    cg = GuestCgroup({"cpu.stat": "usage_usec 5\nuser_usec 3\nsystem_usec 2\n",
                      "memory.current": "4096\n", "memory.max": "max\n",
                      "memory.stat": "file 1024\nanon 2048\n", "pids.current": "2\n",
                      "pids.max": "max\n",
                      "io.stat": "254:0 rbytes=512 wbytes=0 rios=1 wios=0\n"})
    event = {"type": "stats", "id": "c1", "data": runc_stats(cg)}
    assert go_dumps(event) == (
        '{"type":"stats","id":"c1","data":{"cpu":{"usage":{"total":5000,"kernel":2000,'
        '"user":3000},"throttling":{}},"cpuset":{"cpu_exclusive":0,"mem_hardwall":0,'
        '"mem_exclusive":0,"memory_migrate":0,"memory_spread_page":0,"memory_spread_slab":0,'
        '"memory_pressure":0,"sched_load_balance":0,"sched_relax_domain_level":0},'
        '"memory":{"cache":1024,"usage":{"limit":18446744073709551615,"usage":4096,'
        '"failcnt":0},"swap":{"limit":18446744073709551615,"usage":4096,"failcnt":0},'
        '"kernel":{"limit":0,"failcnt":0},"kernelTCP":{"limit":0,"failcnt":0},'
        '"raw":{"anon":2048,"file":1024}},"pids":{"current":2},'
        '"blkio":{"ioServiceBytesRecursive":[{"major":254,"op":"Read","value":512},'
        '{"major":254,"op":"Write"}],"ioServicedRecursive":[{"major":254,"op":"Read",'
        '"value":1},{"major":254,"op":"Write"}]},'
        '"hugetlb":{},"intel_rdt":{},"network_interfaces":null}}')
    full = runc_stats(GUEST)
    assert full["cpu"]["throttling"] == {"periods": 40, "throttledPeriods": 7,
                                         "throttledTime": 1_500_000}
    assert full["memory"]["swap"] == {"limit": 268435456 + 67108864, "usage": 52004096,
                                      "failcnt": 0}
    assert full["pids"] == {"current": 3, "limit": 64}
    assert full["hugetlb"] == {"2MB": {"usage": 2097152, "failcnt": 1}}
    nothing = runc_stats(GuestCgroup({"memory.max": "1048576\n"}))
    assert nothing["cpu"]["usage"] == {"kernel": 0, "user": 0}
    assert nothing["memory"] == {"usage": {"limit": 1 << 20, "failcnt": 0},
                                 "swap": {"limit": 1 << 20, "failcnt": 0},
                                 "kernel": {"limit": 0, "failcnt": 0},
                                 "kernelTCP": {"limit": 0, "failcnt": 0}}
    assert (nothing["pids"], nothing["blkio"]) == ({}, {})
    assert U64_MAX == 18446744073709551615
