//! Relay windows are exact slices of the upstream list, cut from cached fixed-size pages.

use serde_json::json;

use crate::support::{ADMIN_TOKEN, TestApp, ids};

const PAGE: &str = "query($first: Int, $after: String) {
    contacts(first: $first, after: $after) {
        edges { cursor node { id } }
        pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    }
}";

async fn window(app: &TestApp, first: i64, after: Option<&str>) -> serde_json::Value {
    let reply = app
        .query_with(
            Some(ADMIN_TOKEN),
            PAGE,
            json!({ "first": first, "after": after }),
        )
        .await;
    reply.data()["contacts"].clone()
}

#[tokio::test]
async fn an_unaligned_window_is_an_exact_slice() {
    let app = TestApp::spawn_with(&["--upstream-page-size", "10"], Default::default()).await;
    let all = app.fake.visible_ids(ADMIN_TOKEN);
    let first_seven = window(&app, 7, None).await;
    let after = first_seven["pageInfo"]["endCursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    let next = window(&app, 13, Some(&after)).await;
    assert_eq!(ids(&next), all[7..20].to_vec(), "items 8 to 20");
    assert_eq!(next["pageInfo"]["hasPreviousPage"], json!(true));
    assert_eq!(next["pageInfo"]["hasNextPage"], json!(true));
    // Pages 1 and 2 of size 10 cover both windows: each was fetched once.
    let pages: Vec<String> = app
        .contact_calls()
        .iter()
        .map(|c| {
            format!(
                "{}/{}",
                c.param("page").unwrap_or(""),
                c.param("limit").unwrap_or("")
            )
        })
        .collect();
    assert_eq!(pages, vec!["1/10", "2/10"]);
}

#[tokio::test]
async fn a_full_walk_yields_every_contact_exactly_once() {
    let app = TestApp::spawn().await;
    let all = app.fake.visible_ids(ADMIN_TOKEN);
    assert!(all.len() > 1000);
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = window(&app, 97, after.as_deref()).await;
        seen.extend(ids(&page));
        if page["pageInfo"]["hasNextPage"] != json!(true) {
            break;
        }
        after = page["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, all);
    let pages = all.len().div_ceil(250);
    assert_eq!(
        app.contact_calls().len(),
        pages,
        "each upstream page fetched once"
    );
    assert!(
        app.contact_calls()
            .iter()
            .all(|c| c.param("limit") == Some("250")),
        "upstream pages have the default size 250"
    );
}

#[tokio::test]
async fn has_next_page_is_exact_at_the_end_of_the_list() {
    // 2400 contacts in upstream pages of 250: the last page (page 10) is short.
    let app = TestApp::spawn().await;
    let all = app.fake.visible_ids(ADMIN_TOKEN);
    let mut after: Option<String> = None;
    for _ in 0..9 {
        let w = window(&app, 250, after.as_deref()).await;
        assert_eq!(w["pageInfo"]["hasNextPage"], json!(true));
        after = w["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }
    let inside = window(&app, 100, after.as_deref()).await;
    assert_eq!(ids(&inside), all[2250..2350].to_vec());
    assert_eq!(inside["pageInfo"]["hasNextPage"], json!(true));
    let last = window(&app, 50, inside["pageInfo"]["endCursor"].as_str()).await;
    assert_eq!(ids(&last), all[2350..].to_vec());
    assert_eq!(
        last["pageInfo"]["hasNextPage"],
        json!(false),
        "ends on the last item"
    );
    let over = window(&app, 250, after.as_deref()).await;
    assert_eq!(ids(&over), all[2250..].to_vec());
    assert_eq!(
        over["pageInfo"]["hasNextPage"],
        json!(false),
        "asks past the end"
    );
    assert_eq!(app.contact_calls().len(), 10);
}

#[tokio::test]
async fn a_window_ending_on_a_full_last_page_answers_without_another_call() {
    // 500 contacts = exactly two full pages; the fake links a next page anyway, as amoCRM does.
    let options = amocrm_gateway::fake_amocrm::FakeOptions {
        contacts: 500,
        ..Default::default()
    };
    let app = TestApp::spawn_with(&[], options).await;
    let w = window(&app, 250, None).await;
    let w = window(&app, 250, w["pageInfo"]["endCursor"].as_str()).await;
    assert_eq!(w["pageInfo"]["hasNextPage"], json!(true));
    assert_eq!(app.contact_calls().len(), 2);
    let beyond = window(&app, 250, w["pageInfo"]["endCursor"].as_str()).await;
    assert_eq!(beyond["edges"], json!([]));
    assert_eq!(beyond["pageInfo"]["hasNextPage"], json!(false));
    assert_eq!(beyond["pageInfo"].get("endCursor"), Some(&json!(null)));
}

#[tokio::test]
async fn first_zero_makes_no_upstream_call() {
    let app = TestApp::spawn().await;
    let w = window(&app, 0, None).await;
    assert_eq!(w["edges"], json!([]));
    assert_eq!(app.upstream_calls(), 0);
}

#[tokio::test]
async fn the_default_window_is_fifty() {
    let app = TestApp::spawn().await;
    let reply = app
        .query(Some(ADMIN_TOKEN), "{ contacts { nodes { id } } }")
        .await;
    assert_eq!(
        ids(&reply.data()["contacts"]),
        app.fake.visible_ids(ADMIN_TOKEN)[..50].to_vec()
    );
}

#[tokio::test]
async fn a_cursor_from_another_list_is_refused_without_an_upstream_call() {
    let app = TestApp::spawn().await;
    let w = window(&app, 3, None).await;
    let cursor = w["pageInfo"]["endCursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    app.fake.clear_requests();
    let reply = app
        .query_with(
            Some(ADMIN_TOKEN),
            "query($after: String) { contacts(after: $after, order: { field: UPDATED_AT }) { nodes { id } } }",
            json!({ "after": cursor }),
        )
        .await;
    assert_eq!(reply.codes(), vec!["BAD_USER_INPUT"]);
    assert!(
        reply.first_error()["message"]
            .as_str()
            .expect("message")
            .starts_with("after:")
    );
    assert_eq!(app.upstream_calls(), 0);
}
