//! Pure command builders: every `docker …`/shell command berth runs on a host, as `Cmd` values, named and
//! labelled exactly as Kamal names them so a host can pass between Kamal and berth.
