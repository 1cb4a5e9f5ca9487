//! `portcullis.v1.EventService`: operators list, read, watch and summarise events (viewers)
//! and handle them (admins, recorded with the operator's name).

use std::{pin::Pin, sync::Arc};

use sha2::{Digest, Sha256};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use portcullis_proto::limits;
use portcullis_proto::v1::{
    Event, EventFilter, GetEventRequest, HandleEventsRequest, HandleEventsResponse,
    ListEventsRequest, ListEventsResponse, SummarizeRequest, SummarizeResponse, WatchEventsRequest,
    event_service_server::EventService,
};
use portcullis_proto::words::{EventAction, EventState, UnknownWord};

use super::paging;
use crate::{
    auth::{Access, Authenticator},
    events::{EventStore, Matcher},
};

pub struct EventApi {
    events: Arc<EventStore>,
    auth: Arc<Authenticator>,
}

impl EventApi {
    pub fn new(events: Arc<EventStore>, auth: Arc<Authenticator>) -> Self {
        Self { events, auth }
    }
}

/// Page tokens are bound to the filter: the listing name carries a hash of it.
fn listing(filter: &EventFilter) -> String {
    let digest = Sha256::digest(prost::Message::encode_to_vec(filter));
    format!("ListEvents/{}", hex::encode(&digest[..8]))
}

fn check_filter(filter: &EventFilter) -> Result<(), Status> {
    let invalid = |field: &str, error: UnknownWord| {
        Status::invalid_argument(format!("filter.{field}: {error}"))
    };
    if !filter.action.is_empty() {
        filter
            .action
            .parse::<EventAction>()
            .map_err(|e| invalid("action", e))?;
    }
    if !filter.state.is_empty() {
        filter
            .state
            .parse::<EventState>()
            .map_err(|e| invalid("state", e))?;
    }
    if let (Some(since), Some(until)) = (&filter.since, &filter.until)
        && (since.seconds, since.nanos) > (until.seconds, until.nanos)
    {
        return Err(Status::invalid_argument("filter.since: after filter.until"));
    }
    Ok(())
}

fn parse_id(field: &str, id: &str) -> Result<uuid::Uuid, Status> {
    uuid::Uuid::parse_str(id)
        .map_err(|_| Status::invalid_argument(format!("{field}: {id:?} is not an event id")))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

#[tonic::async_trait]
impl EventService for EventApi {
    type WatchEventsStream = EventStream;

    async fn list_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        self.auth.operator(request.metadata(), Access::Read).await?;
        let request = request.into_inner();
        let filter = request.filter.unwrap_or_default();
        check_filter(&filter)?;
        let listing = listing(&filter);
        let before = match paging::decode(&listing, &request.page_token)? {
            Some(key) => Some(
                *parse_id("page_token", &key)
                    .map_err(|_| {
                        Status::invalid_argument(format!("page_token: not a token of {listing}"))
                    })?
                    .as_bytes(),
            ),
            None => None,
        };
        let size = paging::page_size(request.page_size);
        let page = self.events.list(&filter, size, before).await?;
        let mut events = page.events;
        // Events are up to `limits::event::MAX_EVENT_BYTES` each: a page stops at the budget
        // and resumes after the last event it holds.
        let next_page_token = if paging::within_budget(&mut events) {
            events
                .last()
                .map(|e| paging::encode(&listing, &e.id))
                .unwrap_or_default()
        } else {
            page.more_after
                .map(|id| paging::encode(&listing, &uuid::Uuid::from_bytes(id).to_string()))
                .unwrap_or_default()
        };
        Ok(Response::new(ListEventsResponse {
            events,
            next_page_token,
        }))
    }

    async fn get_event(
        &self,
        request: Request<GetEventRequest>,
    ) -> Result<Response<Event>, Status> {
        self.auth.operator(request.metadata(), Access::Read).await?;
        let id = parse_id("id", &request.get_ref().id)?;
        match self.events.get(&id).await? {
            Some(event) => Ok(Response::new(event)),
            None => Err(Status::not_found(format!("event {id} not found"))),
        }
    }

    async fn handle_events(
        &self,
        request: Request<HandleEventsRequest>,
    ) -> Result<Response<HandleEventsResponse>, Status> {
        let operator = self
            .auth
            .operator(request.metadata(), Access::Write)
            .await?;
        let request = request.into_inner();
        let state: EventState = request
            .state
            .parse()
            .map_err(|e| Status::invalid_argument(format!("state: {e}")))?;
        if request.ids.is_empty() {
            return Err(Status::invalid_argument("ids: required"));
        }
        if request.ids.len() > paging::MAX_PAGE_SIZE {
            return Err(Status::invalid_argument(format!(
                "ids: {} given; at most {} per call",
                request.ids.len(),
                paging::MAX_PAGE_SIZE
            )));
        }
        if request.note.len() > limits::event::MAX_NOTE {
            return Err(Status::invalid_argument(format!(
                "note: {} bytes; at most {}",
                request.note.len(),
                limits::event::MAX_NOTE
            )));
        }
        let ids = request
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| parse_id(&format!("ids[{i}]"), id))
            .collect::<Result<Vec<_>, _>>()?;
        let events = self
            .events
            .handle(&ids, state, &request.note, &operator.name)
            .await?;
        tracing::info!(operator = %operator.name, state = %request.state, count = events.len(), "Events handled");
        Ok(Response::new(HandleEventsResponse { events }))
    }

    async fn watch_events(
        &self,
        request: Request<WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.auth.operator(request.metadata(), Access::Read).await?;
        let filter = request.into_inner().filter.unwrap_or_default();
        check_filter(&filter)?;
        let mut new_events = self.events.subscribe().await?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let matcher = Matcher::new(&filter);
            loop {
                let event = tokio::select! {
                    received = new_events.recv() => received,
                    () = tx.closed() => return,
                };
                match event {
                    Ok(event) if matcher.matches(&event) => {
                        if tx.send(Ok((*event).clone())).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        let status = Status::resource_exhausted(format!(
                            "the watcher fell {missed} events behind; list to catch up, then watch again"
                        ));
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn summarize(
        &self,
        request: Request<SummarizeRequest>,
    ) -> Result<Response<SummarizeResponse>, Status> {
        self.auth.operator(request.metadata(), Access::Read).await?;
        let request = request.into_inner();
        let counts = self
            .events
            .summarize(request.since.as_ref(), request.until.as_ref())
            .await?;
        let total = counts.iter().map(|c| c.events).sum();
        Ok(Response::new(SummarizeResponse { counts, total }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_are_bound_to_their_filter() {
        let a = EventFilter {
            cluster: "c1".into(),
            ..Default::default()
        };
        let b = EventFilter {
            cluster: "c2".into(),
            ..Default::default()
        };
        let token = paging::encode(&listing(&a), "x");
        assert!(paging::decode(&listing(&a), &token).is_ok());
        let error = paging::decode(&listing(&b), &token).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn filters_with_unknown_words_are_refused() {
        let mut filter = EventFilter {
            action: "denied".into(),
            ..Default::default()
        };
        assert!(
            check_filter(&filter)
                .unwrap_err()
                .message()
                .contains("filter.action")
        );
        filter.action = EventAction::Blocked.as_str().into();
        filter.state = "open".into();
        assert!(
            check_filter(&filter)
                .unwrap_err()
                .message()
                .contains("filter.state")
        );
    }
}
