//! The test database the harness hands out: fresh, empty, isolated, and
//! reachable through sqlx (the foundation every PostgreSQL test stands on).

use headroom_testkit as kit;

#[tokio::test]
async fn row_round_trips_through_sqlx_in_a_fresh_database() -> anyhow::Result<()> {
    let db = kit::TestDb::new().await?;
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&db.pool)
    .await?;
    assert_eq!(tables, 0, "a fresh database starts empty");
    sqlx::query("CREATE TABLE t (id int PRIMARY KEY, v double precision)")
        .execute(&db.pool)
        .await?;
    sqlx::query("INSERT INTO t VALUES ($1, $2)")
        .bind(7_i32)
        .bind(0.25_f64)
        .execute(&db.pool)
        .await?;
    let v: f64 = sqlx::query_scalar("SELECT v FROM t WHERE id = $1")
        .bind(7_i32)
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(v, 0.25);
    Ok(())
}
