# berth's own image: the static binary and nothing else (no base image can be pulled on the test machines).
# Build the binary first:
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu
# then: docker build -t berth .
FROM scratch
COPY target/x86_64-unknown-linux-gnu/release/berth /berth
ENTRYPOINT ["/berth"]
