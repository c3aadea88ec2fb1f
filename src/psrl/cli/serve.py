"""``psrl serve rewards --config FILE``: run the reward server (see :mod:`psrl.serve.server`).

Example config::

    host: 127.0.0.1          # any other host needs an API key (api_key, or $PSRL_REWARD_API_KEY)
    port: 8765
    device: cuda
    data_root: /data/psrbench
    batch_window_ms: 10
    rewards:
      - {name: subject_consistency, args: {mode: honest}}
      - {name: hps, reward: hpsv3, args: {path: /models/HPSv3.safetensors, base_path: /models/Qwen2-VL-7B-Instruct}}
"""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve rewards over HTTP")
    sub = p.add_subparsers(dest="serve_what", metavar="WHAT")
    r = sub.add_parser("rewards", help="load configured rewards once and score images for remote clients")
    r.add_argument("--config", required=True, help="YAML server config (rewards, host, port, api_key_env, ...)")
    r.add_argument("--host", help="override the bind address")
    r.add_argument("--port", type=int, help="override the port")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted config override")
    r.set_defaults(func=_serve_rewards)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _serve_rewards(args) -> int:
    from psrl.config import load_config
    from psrl.serve.server import ServerConfig, serve

    overrides = list(args.set)
    if args.host:
        overrides.append(f"host={args.host}")
    if args.port:
        overrides.append(f"port={args.port}")
    cfg = load_config(ServerConfig, args.config, overrides)
    serve(cfg)
    return 0
