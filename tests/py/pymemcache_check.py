"""Drives a memcached-compatible server with pymemcache (4.0.0) and checks every answer.

Usage: pymemcache_check.py PORT   (host 127.0.0.1). Prints "PYMEMCACHE OK" and exits 0 on success.
"""
import sys
import time

try:
    import pymemcache
    from pymemcache.client.base import Client
except ImportError as e:  # pragma: no cover
    print(f"pymemcache is not installed for {sys.executable}: {e}", file=sys.stderr)
    sys.exit(3)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def main():
    port = int(sys.argv[1])
    c = Client(("127.0.0.1", port), connect_timeout=5, timeout=5, default_noreply=False)

    # set / get / get_many
    check(c.set("py_a", b"alpha") is True, "set")
    check(c.get("py_a") == b"alpha", "get")
    check(c.get("py_missing") is None, "get miss")
    check(c.get("py_missing", default=b"d") == b"d", "get default")
    check(c.set("py_b", b"beta", expire=100) is True, "set with expire")
    check(c.set_many({"py_c": b"gamma", "py_d": b"delta"}) == [], "set_many")
    check(
        c.get_many(["py_a", "py_b", "py_missing", "py_c", "py_d"])
        == {"py_a": b"alpha", "py_b": b"beta", "py_c": b"gamma", "py_d": b"delta"},
        "get_many",
    )
    # binary value with CRLF inside, 32-bit flags through the raw protocol
    blob = bytes(range(256)) + b"\r\nEND\r\n"
    check(c.set("py_blob", blob) is True, "set blob")
    check(c.get("py_blob") == blob, "get blob")

    # gets / cas
    value, cas = c.gets("py_a")
    check(value == b"alpha" and cas is not None, "gets")
    check(c.cas("py_a", b"alpha2", cas) is True, "cas ok")
    check(c.cas("py_a", b"alpha3", cas) is False, "cas stale -> EXISTS")
    check(c.cas("py_nokey", b"x", b"1") is None, "cas missing -> NOT_FOUND")
    value2, cas2 = c.gets("py_a")
    check(value2 == b"alpha2" and cas2 != cas, "cas changed")
    check(c.gets("py_missing") == (None, None), "gets miss")
    many = c.gets_many(["py_a", "py_b"])
    check(many["py_a"] == (b"alpha2", cas2) and many["py_b"][0] == b"beta", "gets_many")

    # add / replace / append / prepend
    check(c.add("py_a", b"x") is False, "add existing")
    check(c.add("py_new", b"new") is True, "add new")
    check(c.replace("py_new", b"NEW") is True, "replace existing")
    check(c.replace("py_none", b"x") is False, "replace missing")
    check(c.get("py_none") is None, "replace missing stored nothing")
    check(c.append("py_new", b">>") is True, "append")
    check(c.prepend("py_new", b"<<") is True, "prepend")
    check(c.get("py_new") == b"<<NEW>>", "append+prepend")
    check(c.append("py_none", b"x") is False, "append missing")
    check(c.prepend("py_none", b"x") is False, "prepend missing")

    # incr / decr
    check(c.set("py_n", b"10") is True, "set counter")
    check(c.incr("py_n", 5) == 15, "incr")
    check(c.decr("py_n", 20) == 0, "decr floors at 0")
    check(c.incr("py_nokey", 1) is None, "incr missing")
    check(c.decr("py_nokey", 1) is None, "decr missing")
    check(c.set("py_n", b"18446744073709551615") is True, "set max")
    check(c.incr("py_n", 1) == 0, "incr wraps")
    try:
        c.incr("py_a", 1)
        check(False, "incr non-numeric should raise")
    except pymemcache.exceptions.MemcacheClientError as e:
        check("non-numeric" in str(e), f"incr non-numeric error: {e}")

    # touch / delete
    check(c.touch("py_b", 100) is True, "touch")
    check(c.touch("py_nokey", 100) is False, "touch missing")
    check(c.delete("py_b") is True, "delete")
    check(c.delete("py_b") is False, "delete missing")
    check(c.get("py_b") is None, "deleted")
    check(c.delete_many(["py_c", "py_d"]) is True, "delete_many")
    check(c.get_many(["py_c", "py_d"]) == {}, "delete_many effect")

    # expiry
    check(c.set("py_exp", b"soon", expire=1) is True, "set expire 1")
    check(c.get("py_exp") == b"soon", "live before expiry")
    deadline = time.time() + 4
    while c.get("py_exp") is not None:
        check(time.time() < deadline, "expired within 4 s")
        time.sleep(0.05)

    # noreply through pymemcache
    check(c.set("py_q", b"quiet", noreply=True) is True, "set noreply")
    check(c.get("py_q") == b"quiet", "get after noreply")

    # version / stats / flush_all
    check(len(c.version()) > 0, "version")
    stats = c.stats()
    check(b"curr_items" in stats or "curr_items" in stats, "stats curr_items")
    check(c.flush_all(noreply=False) is True, "flush_all")
    check(c.get_many(["py_a", "py_new", "py_n", "py_blob"]) == {}, "flushed")
    c.close()
    print("PYMEMCACHE OK")


if __name__ == "__main__":
    main()
