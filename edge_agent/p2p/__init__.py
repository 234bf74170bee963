"""Models between nodes: each node serves its store to peers (`server`), pulls versions from
several peers at once with resume and a rate limit (`fetch`), and announces what it holds on its
retained MQTT model topic (`announce`). Only ONNX travels; engines are built on each node.
"""
