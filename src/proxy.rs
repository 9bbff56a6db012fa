//! The berth proxy: the zero-downtime reverse proxy on every host, with kamal-proxy's control surface.
