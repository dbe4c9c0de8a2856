"""`moon`, the command line of moonbus (typer + rich): tail, status, positions, orders,
trace, price, monitor, killswitch. Entry point: `services.cli.main:app`.

- `connection`: where NATS is and with which credentials; one-line errors;
- `tail`, `status`, `orders`: the commands that do more than one request;
- `render`: colours, times and money as shown.
"""
