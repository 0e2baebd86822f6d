//! The in-process fan-out behind `GET /v1/events`: one small broadcast channel per user that has a stream
//! open, created with its first stream and removed with its last, plus one channel for admin streams (which
//! hear everyone). A change therefore wakes only the streams of its own user and the admins, never the
//! thousands of idle streams of other users. Keep-alives and shutdown reach every stream through one shared
//! `watch` pulse, so an idle stream owns no timer of its own.
//!
//! It must never block on a slow reader: broadcast channels drop what a lagging stream missed, and the
//! stream turns the gap into a plain `changes` hint (a pull catches up on everything).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::events::Event;

/// Events a user's channel holds for a stream that is behind. Small on purpose: every user with a stream
/// open has one, and a stream that falls further behind is told to pull instead.
const PER_USER_CAPACITY: usize = 16;
/// The admin channel is shared by every admin stream and hears every user.
const ADMIN_CAPACITY: usize = 1024;
/// How often every open stream sends a keep-alive comment.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What every stream hears at once: a keep-alive tick, or the server stopping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pulse {
    pub ticks: u64,
    pub closed: bool,
}

/// The streams of one instance.
pub(crate) struct Hub {
    users: Mutex<HashMap<Box<str>, broadcast::Sender<Arc<Event>>>>,
    admins: broadcast::Sender<Arc<Event>>,
    pulse: watch::Sender<Pulse>,
    ticker: std::sync::Once,
}

impl Hub {
    pub(crate) fn new() -> Arc<Hub> {
        Arc::new(Hub {
            users: Mutex::new(HashMap::new()),
            admins: broadcast::channel(ADMIN_CAPACITY).0,
            pulse: watch::Sender::new(Pulse::default()),
            ticker: std::sync::Once::new(),
        })
    }

    /// Delivers an event to its user's streams and to the admin streams. Never blocks on a reader.
    pub(crate) fn send(&self, event: Event) {
        let event = Arc::new(event);
        if self.admins.receiver_count() > 0 {
            let _ = self.admins.send(event.clone());
        }
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = users.get(event.user.as_str()) {
            let _ = sender.send(event);
        }
    }

    /// A new stream for `user` (every user's events when `admin`).
    pub(crate) fn subscribe(self: &Arc<Hub>, user: &str, admin: bool) -> Subscription {
        self.start_ticker();
        let receiver = if admin {
            self.admins.subscribe()
        } else {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            match users.get(user) {
                Some(sender) => sender.subscribe(),
                None => {
                    let (sender, receiver) = broadcast::channel(PER_USER_CAPACITY);
                    users.insert(user.into(), sender);
                    receiver
                }
            }
        };
        Subscription {
            receiver: Some(receiver),
            pulse: self.pulse.subscribe(),
            user: (!admin).then(|| user.into()),
            hub: Arc::downgrade(self),
        }
    }

    /// Users with at least one stream open (their channels exist).
    #[cfg(test)]
    fn users_listening(&self) -> usize {
        self.users.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Ends every open stream.
    pub(crate) fn close(&self) {
        self.pulse.send_modify(|p| p.closed = true);
    }

    /// One task for the whole instance sends the keep-alive ticks; it ends with the hub.
    fn start_ticker(self: &Arc<Hub>) {
        self.ticker.call_once(|| {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            let hub = Arc::downgrade(self);
            runtime.spawn(async move {
                let mut interval = tokio::time::interval(KEEP_ALIVE);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                interval.tick().await;
                loop {
                    interval.tick().await;
                    let Some(hub) = hub.upgrade() else { return };
                    if hub.pulse.borrow().closed {
                        return;
                    }
                    hub.pulse.send_modify(|p| p.ticks += 1);
                }
            });
        });
    }
}

/// One open stream's end of the hub. Dropping the last stream of a user removes the user's channel.
pub(crate) struct Subscription {
    receiver: Option<broadcast::Receiver<Arc<Event>>>,
    pulse: watch::Receiver<Pulse>,
    user: Option<Box<str>>,
    hub: std::sync::Weak<Hub>,
}

/// What a stream should send next.
pub(crate) enum Next {
    Event(Arc<Event>),
    /// The stream fell behind and lost events: a pull catches up on everything.
    Lagged,
    KeepAlive,
    /// The server is stopping.
    Closed,
}

impl Subscription {
    pub(crate) async fn next(&mut self) -> Next {
        if self.pulse.borrow_and_update().closed {
            return Next::Closed;
        }
        let Some(receiver) = self.receiver.as_mut() else {
            return Next::Closed;
        };
        enum Woke {
            Pulse(bool),
            Received(Result<Arc<Event>, broadcast::error::RecvError>),
        }
        let woke = tokio::select! {
            changed = self.pulse.changed() => Woke::Pulse(changed.is_ok()),
            received = receiver.recv() => Woke::Received(received),
        };
        match woke {
            Woke::Pulse(true) if !self.pulse.borrow_and_update().closed => Next::KeepAlive,
            Woke::Pulse(_) => Next::Closed,
            Woke::Received(Ok(event)) => Next::Event(event),
            Woke::Received(Err(broadcast::error::RecvError::Lagged(_))) => Next::Lagged,
            Woke::Received(Err(broadcast::error::RecvError::Closed)) => Next::Closed,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.receiver.take());
        let (Some(user), Some(hub)) = (self.user.take(), self.hub.upgrade()) else {
            return;
        };
        let mut users = hub.users.lock().unwrap_or_else(|e| e.into_inner());
        if users.get(&user).is_some_and(|s| s.receiver_count() == 0) {
            users.remove(&user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user: &str, n: i64) -> Event {
        Event {
            user: user.into(),
            kind: "changes".into(),
            data: format!("{{\"sequence\":{n}}}"),
        }
    }

    async fn next_event(s: &mut Subscription) -> Option<String> {
        match tokio::time::timeout(Duration::from_millis(200), s.next()).await {
            Ok(Next::Event(e)) => Some(format!("{}:{}", e.user, e.data)),
            Ok(Next::Lagged) => Some("lagged".into()),
            Ok(Next::KeepAlive) => Some("keep-alive".into()),
            Ok(Next::Closed) => Some("closed".into()),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn a_change_reaches_its_user_and_the_admins_only() {
        let hub = Hub::new();
        let mut alice = hub.subscribe("alice", false);
        let mut alice2 = hub.subscribe("alice", false);
        let mut bob = hub.subscribe("bob", false);
        let mut admin = hub.subscribe("root", true);
        hub.send(event("alice", 7));
        let seven = Some("alice:{\"sequence\":7}".to_string());
        assert_eq!(next_event(&mut alice).await, seven);
        assert_eq!(next_event(&mut alice2).await, seven);
        assert_eq!(next_event(&mut admin).await, seven);
        assert_eq!(next_event(&mut bob).await, None);
    }

    #[tokio::test]
    async fn a_user_channel_lives_as_long_as_its_streams() {
        let hub = Hub::new();
        let a = hub.subscribe("alice", false);
        let b = hub.subscribe("alice", false);
        let _admin = hub.subscribe("root", true);
        assert_eq!(hub.users_listening(), 1);
        drop(a);
        assert_eq!(hub.users_listening(), 1);
        drop(b);
        assert_eq!(hub.users_listening(), 0);
        hub.send(event("alice", 1)); // nobody listens: dropped quietly
    }

    #[tokio::test]
    async fn a_stream_that_falls_behind_is_told_to_pull_and_close_ends_every_stream() {
        let hub = Hub::new();
        let mut s = hub.subscribe("alice", false);
        for n in 0..(PER_USER_CAPACITY as i64 + 5) {
            hub.send(event("alice", n));
        }
        assert_eq!(next_event(&mut s).await.as_deref(), Some("lagged"));
        hub.close();
        assert_eq!(next_event(&mut s).await.as_deref(), Some("closed"));
    }
}
