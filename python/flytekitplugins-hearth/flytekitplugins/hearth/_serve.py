"""``hearth-connector``: flytekit's connector service (gRPC, what
``pyflyte serve connector`` starts) with the hearth connector registered,
forwarding ``hearth-actor`` tasks to a node's hearthd.

    hearth-connector [--socket PATH] [--port 8000] [--prometheus_port 9090] [--worker 10] [--timeout S]

``--socket`` sets ``HEARTH_SOCKET`` for the connector (default: the
environment's, else ``/run/hearth/hearthd.sock``); every other option is
``pyflyte serve connector``'s and goes to it unchanged.
"""

import argparse
import os
import sys

__all__ = ["main"]


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="hearth-connector", add_help=False,
        description="Serve Flyte's connector interface for hearth-actor tasks (flytekit's connector service); "
                    "options other than --socket are `pyflyte serve connector`'s.")
    parser.add_argument("--socket", help="hearthd's socket (sets HEARTH_SOCKET; default $HEARTH_SOCKET or "
                                         "/run/hearth/hearthd.sock)")
    parser.add_argument("-h", "--help", action="store_true")
    ours, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if ours.help:
        parser.print_help()
        print("\npyflyte serve connector's options:")
        rest = ["--help"]
    if ours.socket is not None:
        if not ours.socket:
            parser.error("--socket: expected the path of hearthd's socket, got an empty string")
        os.environ["HEARTH_SOCKET"] = ours.socket

    # Importing the plugin registers the connector (flytekit's own entry-point loading does too).
    import flytekitplugins.hearth  # noqa: F401
    from flytekit.clis.sdk_in_container.serve import connector
    from hearth import _actor

    if not ours.help:
        c = _actor._client_for(None)
        try:
            c.call("GET", "/v1/version", what="hearthd's version")
            print("hearth-connector: hearth-actor tasks go to hearthd at %s" % c.path, flush=True)
        except Exception as e:  # hearthd may start after the connector: each task says so if it still cannot
            print("hearth-connector: warning: hearthd at %s does not answer yet: %s" % (c.path, e), flush=True)
    try:
        # What flytekit's server imports first (prometheus-client, httpx): its own error names neither.
        import flytekit.extend.backend.connector_service  # noqa: F401
        import flytekit.extras.webhook  # noqa: F401
    except ImportError as e:
        sys.exit("hearth-connector: flytekit's connector service cannot start: %s; install flytekit's connector "
                 "extra (pip install 'flytekitplugins-hearth[connector]' or 'flytekit[connector]')" % e)
    return connector.main(args=rest, prog_name="hearth-connector")


if __name__ == "__main__":
    main()
