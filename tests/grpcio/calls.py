"""CSI calls through grpcio (gRPC C core, what Python's CSI tools use) to an iolane node.

    calls.py SOCKET NODE_ID

grpcio sends the socket's path, percent-encoded, as `:authority`; a client that sets the
bare path (grpc-java's form) is tried too. Each call prints `ok NAME` or `FAILED NAME: why`,
then the closing line `grpcio: N passed, M failed`. Exit status 0 when none failed.
Requests are hand-serialized protobuf (each is empty or one string field), so nothing but
grpcio is needed.
"""

import sys

import grpc

TIMEOUT = 30


def fields(msg):
    """The top-level fields of a protobuf message: {field number: [raw value, ...]}."""
    out, i = {}, 0

    def varint():
        nonlocal i
        shift = value = 0
        while True:
            b = msg[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value

    while i < len(msg):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire == 2:
            n = varint()
            value = msg[i : i + n]
            i += n
        elif wire == 1:
            value, i = msg[i : i + 8], i + 8
        elif wire == 5:
            value, i = msg[i : i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def call(channel, method, request=b""):
    return channel.unary_unary(method)(request, timeout=TIMEOUT)


def main():
    sock, node_id = sys.argv[1], sys.argv[2]
    passed = failed = 0

    def check(name, fn):
        nonlocal passed, failed
        try:
            fn()
        except grpc.RpcError as e:
            failed += 1
            print(f"FAILED {name}: {e.code()} {e.details()}")
        except AssertionError as e:
            failed += 1
            print(f"FAILED {name}: {e}")
        else:
            passed += 1
            print(f"ok {name}")

    def plugin_info(channel):
        info = fields(call(channel, "/csi.v1.Identity/GetPluginInfo"))
        assert info.get(1) == [b"csi.iolane.dev"], f"GetPluginInfo name {info.get(1)}"
        assert info.get(2), "GetPluginInfo has no vendor_version"

    # The default: `:authority` is the socket's path, percent-encoded. Several calls on one
    # connection: after the first, grpcio sends `:authority` by its HPACK table index.
    with grpc.insecure_channel(f"unix://{sock}") as channel:
        check("grpcio-default-authority::GetPluginInfo", lambda: plugin_info(channel))

        def probe():
            call(channel, "/csi.v1.Identity/Probe")

        check("grpcio-default-authority::Probe", probe)

        def capabilities():
            caps = fields(call(channel, "/csi.v1.Identity/GetPluginCapabilities"))
            assert caps.get(1), "GetPluginCapabilities lists no capability"

        check("grpcio-default-authority::GetPluginCapabilities", capabilities)

        def node_info():
            info = fields(call(channel, "/csi.v1.Node/NodeGetInfo"))
            assert info.get(1) == [node_id.encode()], f"NodeGetInfo node_id {info.get(1)}"

        check("grpcio-default-authority::NodeGetInfo", node_info)

        def bad_request():
            # NodeGetVolumeStats with no volume_id: a proper gRPC error, not a reset stream.
            try:
                call(channel, "/csi.v1.Node/NodeGetVolumeStats")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{e.code()} {e.details()}"
                assert "volume_id" in (e.details() or ""), e.details()
                return
            raise AssertionError("NodeGetVolumeStats without a volume_id succeeded")

        check("grpcio-default-authority::NodeGetVolumeStats-invalid", bad_request)

    # The bare path as `:authority`, as grpc-java sends it.
    options = [("grpc.default_authority", sock)]
    with grpc.insecure_channel(f"unix://{sock}", options=options) as channel:
        check("grpcio-path-authority::GetPluginInfo", lambda: plugin_info(channel))

    print(f"grpcio: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
