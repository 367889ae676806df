"""`synbt web`: SynBT in the browser (trame-slicer), or a reader study (--study)."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "web",
        help="SynBT in the browser: open cases, mark a region, Generate, compare, save, export; or a reader study",
        description="Serves a web page (needs the web extra: pip install 'synbt[web]'). Only files under --data "
        "(or the --study folder) are read or written. It listens on 127.0.0.1 unless --host is given. A token "
        "is always required (--token, else a random one; a web page could otherwise reach a local server): "
        "the URL printed at start carries it as ?secret=TOKEN.",
    )
    p.add_argument("--data", metavar="DIR", help="folder of case folders to open (and where results are saved)")
    p.add_argument("--study", metavar="STUDY", help="serve this reader study (from `synbt reader-study create`) instead")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--token", help="access token (at least 16 characters); default: a random one, printed in the URL")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..errors import SynBTError
    from ..web.files import access_token

    if (args.data is None) == (args.study is None):
        raise SynBTError("give --data DIR (the SynBT page) or --study STUDY (a reader study), not both")
    folder = Path(args.data or args.study)
    if not folder.is_dir():
        raise SynBTError(f"{folder} is not a folder")
    token = access_token(args.host, args.token)
    import importlib.util

    if importlib.util.find_spec("trame_slicer") and not importlib.util.find_spec("slicer_layer_dm"):
        raise SynBTError("synbt web needs slicer-layer-dm, which pip leaves out (its metadata pins an older "
                         "slicer-core): pip install --no-deps slicer-layer-dm==2.0.0")
    try:
        from ..web.app import serve
    except ImportError as exc:
        raise SynBTError(f"synbt web needs the web extra ({exc.name} is missing): pip install 'synbt[web]'") from None
    serve(data=args.data, study=args.study, host=args.host, port=args.port, token=token)
    return 0
