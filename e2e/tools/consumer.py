"""A RabbitMQ consumer for nerite's prefetch trials.

Consumes QUEUE with a given prefetch and a processing delay per message (acks after the
delay, one message at a time), printing "ready" once it consumes. Stops on SIGTERM.

usage: consumer.py AMQP_PORT QUEUE PREFETCH DELAY_SECONDS
"""

import signal
import sys
import time

import pika


def main() -> int:
    port, queue, prefetch, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    params = pika.ConnectionParameters(
        host="127.0.0.1",
        port=int(port),
        credentials=pika.PlainCredentials("guest", "guest"),
        heartbeat=30,
    )
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)

    def handle(ch, method, _properties, _body):
        if delay > 0:
            time.sleep(delay)
        ch.basic_ack(delivery_tag=method.delivery_tag)

    channel.basic_consume(queue=queue, on_message_callback=handle)
    signal.signal(signal.SIGTERM, lambda *_: channel.stop_consuming())
    print("ready", flush=True)
    try:
        channel.start_consuming()
    finally:
        try:
            connection.close()
        except Exception:  # noqa: BLE001 - the broker may be gone already
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
