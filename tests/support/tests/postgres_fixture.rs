//! The PostgreSQL fixture itself: a cluster starts with its database, survives a stop and a start
//! on the same port and data, and leaves nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpStream;
use test_support::PostgresCluster;

#[test]
fn a_cluster_starts_stops_and_starts_again_with_its_data() {
    let mut cluster = PostgresCluster::start();
    let port = cluster.port();
    assert_eq!(cluster.url(), format!("postgres://registry_token@127.0.0.1:{port}/registry_token"));
    assert_eq!(cluster.psql("SELECT 1"), "1\n");
    assert_eq!(cluster.psql("SELECT current_database(), current_user"), "registry_token|registry_token\n");
    cluster.psql("CREATE TABLE kept (n integer); INSERT INTO kept VALUES (42)");

    cluster.stop();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the server still listens after stop()");

    cluster.start_again();
    assert_eq!(cluster.port(), port);
    assert_eq!(cluster.psql("SELECT 1"), "1\n");
    assert_eq!(cluster.psql("SELECT n FROM kept"), "42\n");

    drop(cluster);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the server still listens after drop");
}
