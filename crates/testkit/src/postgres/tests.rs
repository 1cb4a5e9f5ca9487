use super::*;

#[test]
fn serves_sql_and_survives_restarts() {
    let Some(mut pg) = Postgres::start() else {
        return;
    };
    let url = pg.create_database("store");
    assert_eq!(
        url,
        format!(
            "postgres://portcullis:{}@127.0.0.1:{}/store?sslmode=disable",
            pg.password(),
            pg.port()
        )
    );
    assert_eq!(pg.sql("store", "select 1"), "1");
    pg.sql("store", "create table t (v int); insert into t values (7)");

    pg.stop();
    pg.start_again();
    assert_eq!(pg.sql("store", "select v from t"), "7");

    // An immediate stop loses no committed row: the next start replays the WAL.
    pg.sql("store", "insert into t values (8)");
    pg.kill();
    pg.start_again();
    assert_eq!(pg.sql("store", "select v from t order by v"), "7\n8");

    pg.drop_database("store");
    assert_eq!(
        pg.sql(
            "postgres",
            "select count(*) from pg_database where datname = 'store'"
        ),
        "0"
    );
    let dir = pg.dir().to_path_buf();
    drop(pg);
    assert!(!dir.exists(), "the temporary cluster is removed");
}

#[test]
fn a_kept_cluster_is_reused() {
    if postgres_bin_dir().is_none() {
        return;
    }
    let parent = tempfile::tempdir().unwrap();
    // As `.portcullis` is: the server's user (when this is root) may pass through.
    fs::set_permissions(parent.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = parent.path().join("postgres");
    let pg = Postgres::start_in(dir.clone(), free_port()).unwrap();
    let password = pg.password().to_owned();
    let mode = fs::metadata(pg.password_file()).unwrap().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(fs::read_to_string(pg.password_file()).unwrap(), password);
    pg.create_database("portcullis");
    pg.sql(
        "portcullis",
        "create table kept (v text); insert into kept values ('yes')",
    );
    drop(pg);

    let pg = Postgres::start_in(dir, free_port()).unwrap();
    assert_eq!(pg.password(), password);
    assert_eq!(pg.sql("portcullis", "select v from kept"), "yes");
}

#[test]
fn a_taken_port_is_reported_as_such() {
    if postgres_bin_dir().is_none() {
        return;
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let parent = tempfile::tempdir().unwrap();
    fs::set_permissions(parent.path(), fs::Permissions::from_mode(0o755)).unwrap();
    match Postgres::start_in(parent.path().join("postgres"), port) {
        Err(PostgresError::NotStarted { log_tail, .. }) => {
            assert!(address_in_use(&log_tail), "{log_tail}");
        }
        Err(error) => panic!("unexpected error: {error}"),
        Ok(_) => panic!("started on a taken port"),
    }
}
