"""``psrl serve rewards --config FILE``: run the reward server (see :mod:`psrl.serve.server`).

Example config::

    host: 127.0.0.1          # any other host needs an API key
    port: 8765
    device: cuda
    data_root: /data/psrbench
    batch_window_ms: 10
    # the API key: $PSRL_REWARD_API_KEY by default (api_key_env names another variable), or a file:
    # api_key_file: /etc/psrl/reward_key   (chmod 600; never pass the key with --set: ps shows it)
    max_body_bytes: 268435456   # 413 beyond this (256 MiB)
    max_images: 256             # 422 beyond this many images in one request
    max_pixels: 16777216        # 413 for an image over 4096 x 4096 pixels, read from its header
    max_text_chars: 4096        # 422 for a prompt or subject phrase longer than this
    rewards:
      - {name: subject_consistency, args: {mode: honest}}
      - {name: hps, reward: hpsv3, args: {path: /models/HPSv3.safetensors, base_path: /models/Qwen2-VL-7B-Instruct}}
"""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve rewards over HTTP")
    sub = p.add_subparsers(dest="serve_what", metavar="WHAT")
    r = sub.add_parser("rewards", help="load configured rewards once and score images for remote clients",
                       description="Serve rewards over HTTP. The API key (required off loopback) is read from "
                                   "$PSRL_REWARD_API_KEY (or the variable named by api_key_env) or from the file "
                                   "named by api_key_file; it is never accepted on the command line.")
    r.add_argument("--config", required=True, help="YAML server config (rewards, host, port, api_key_file, limits)")
    r.add_argument("--host", help="override the bind address, taken literally (127.0.0.1, ::1, ::, 0.0.0.0)")
    r.add_argument("--port", type=int, help="override the port")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted config override (not api_key: use the environment variable or api_key_file)")
    r.set_defaults(func=_serve_rewards)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _serve_rewards(args) -> int:
    from psrl.serve.server import load_server_config, serve

    cfg = load_server_config(args.config, list(args.set), host=args.host, port=args.port)
    serve(cfg)
    return 0
