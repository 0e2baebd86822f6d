//! The in-process fan-out behind `GET /v1/events`: one small broadcast channel per user that has a stream
//! open, created with its first stream and removed with its last, plus one channel for admin streams (which
//! hear everyone). A change therefore wakes only the streams of its own user and the admins, never the
//! thousands of idle streams of other users.
//!
//! What travels is the finished Server-Sent Events frame, serialised once per event into one shared
//! [`Bytes`]: a listener clones a reference to it and hands it to its connection, with no allocation or
//! serialisation of its own. Keep-alives and the shutdown travel through the same channels, so a stream
//! waits on one thing only and owns no timer (one task for the whole instance sends the keep-alives).
//!
//! It must never block on a slow reader: broadcast channels drop what a lagging stream missed, and the
//! stream turns the gap into a plain `changes` hint (a pull catches up on everything).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::events::Event;

/// Messages a user's channel holds for a stream that is behind. Small on purpose: every user with a stream
/// open has one, and a stream that falls further behind is told to pull instead.
const PER_USER_CAPACITY: usize = 8;
/// The admin channel is shared by every admin stream and hears every user.
const ADMIN_CAPACITY: usize = 1024;
/// How often every open stream sends a keep-alive comment.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The keep-alive comment.
const KEEP_ALIVE_FRAME: &[u8] = b": keep-alive\n\n";
/// What a stream that fell behind sends instead of the events it lost: pull, and catch up on everything.
const CHANGES_HINT_FRAME: &[u8] = b"event: changes\ndata: {}\n\n";

/// One event as a Server-Sent Events frame (HTML standard, "server-sent events": `event:` names it, each
/// line of the data is a `data:` line, a blank line ends it).
pub(crate) fn frame(kind: &str, data: &str) -> Bytes {
    debug_assert!(!kind.contains(['\r', '\n']), "an event name is one line");
    let mut out = String::with_capacity(kind.len() + data.len() + 16);
    out.push_str("event: ");
    out.push_str(kind);
    out.push('\n');
    for line in data.replace("\r\n", "\n").split(['\r', '\n']) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// What goes down a channel.
#[derive(Debug, Clone)]
enum Message {
    /// A finished frame, shared by every stream that hears it.
    Frame(Bytes),
    /// The server is stopping.
    Close,
}

/// The streams of one instance.
pub(crate) struct Hub {
    /// The channels of the users with a stream open; also guards `closed` against a racing subscribe.
    users: Mutex<HashMap<Box<str>, broadcast::Sender<Message>>>,
    admins: broadcast::Sender<Message>,
    closed: AtomicBool,
    ticker: std::sync::Once,
}

impl Hub {
    pub(crate) fn new() -> Arc<Hub> {
        Arc::new(Hub {
            users: Mutex::new(HashMap::new()),
            admins: broadcast::channel(ADMIN_CAPACITY).0,
            closed: AtomicBool::new(false),
            ticker: std::sync::Once::new(),
        })
    }

    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, broadcast::Sender<Message>>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delivers an event to its user's streams and to the admin streams, serialised once for all of
    /// them. Never blocks on a reader.
    pub(crate) fn send(&self, event: &Event) {
        let admins = self.admins.receiver_count() > 0;
        let users = self.users();
        let sender = users.get(event.user.as_str());
        if sender.is_none() && !admins {
            return;
        }
        let message = Message::Frame(frame(&event.kind, &event.data));
        if let Some(sender) = sender {
            let _ = sender.send(message.clone());
        }
        drop(users);
        if admins {
            let _ = self.admins.send(message);
        }
    }

    /// A new stream for `user` (every user's events when `admin`).
    pub(crate) fn subscribe(self: &Arc<Hub>, user: &str, admin: bool) -> Subscription {
        self.start_ticker();
        let mut users = self.users();
        if self.closed.load(Ordering::Acquire) {
            return Subscription {
                receiver: None,
                user: None,
                hub: std::sync::Weak::new(),
            };
        }
        let receiver = if admin {
            self.admins.subscribe()
        } else {
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
            user: (!admin).then(|| user.into()),
            hub: Arc::downgrade(self),
        }
    }

    /// Users with at least one stream open (their channels exist).
    #[cfg(test)]
    fn users_listening(&self) -> usize {
        self.users().len()
    }

    /// Sends `message` to every open stream.
    fn broadcast(&self, message: Message) {
        let users = self.users();
        for sender in users.values() {
            let _ = sender.send(message.clone());
        }
        let _ = self.admins.send(message);
    }

    /// Sends every open stream a keep-alive comment.
    fn keep_alive(&self) {
        self.broadcast(Message::Frame(Bytes::from_static(KEEP_ALIVE_FRAME)));
    }

    /// Ends every open stream, and every stream opened from now on.
    pub(crate) fn close(&self) {
        let users = self.users();
        self.closed.store(true, Ordering::Release);
        drop(users);
        self.broadcast(Message::Close);
    }

    /// One task for the whole instance sends the keep-alives; it ends with the hub.
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
                    if hub.closed.load(Ordering::Acquire) {
                        return;
                    }
                    hub.keep_alive();
                }
            });
        });
    }
}

/// One open stream's end of the hub. Dropping the last stream of a user removes the user's channel.
pub(crate) struct Subscription {
    receiver: Option<broadcast::Receiver<Message>>,
    user: Option<Box<str>>,
    hub: std::sync::Weak<Hub>,
}

impl Subscription {
    /// The next frame to send: an event, a keep-alive, or a `changes` hint when the stream fell behind and
    /// lost events. `None` once the server is stopping.
    pub(crate) async fn next(&mut self) -> Option<Bytes> {
        let receiver = self.receiver.as_mut()?;
        match receiver.recv().await {
            Ok(Message::Frame(frame)) => Some(frame),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                Some(Bytes::from_static(CHANGES_HINT_FRAME))
            }
            Ok(Message::Close) | Err(broadcast::error::RecvError::Closed) => {
                self.receiver = None;
                None
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.receiver.take());
        let (Some(user), Some(hub)) = (self.user.take(), self.hub.upgrade()) else {
            return;
        };
        let mut users = hub.users();
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

    /// The next frame as text, `closed` at the end, `None` when nothing comes.
    async fn next_frame(s: &mut Subscription) -> Option<String> {
        match tokio::time::timeout(Duration::from_millis(200), s.next()).await {
            Ok(Some(frame)) => Some(String::from_utf8(frame.to_vec()).unwrap()),
            Ok(None) => Some("closed".into()),
            Err(_) => None,
        }
    }

    /// The frames up to the end of the stream, which must come within the helper's wait.
    async fn until_closed(s: &mut Subscription) -> Vec<String> {
        let mut frames = Vec::new();
        loop {
            match next_frame(s).await {
                Some(f) if f == "closed" => return frames,
                Some(f) => frames.push(f),
                None => panic!("the stream did not end; it sent {frames:?}"),
            }
        }
    }

    #[test]
    fn a_frame_has_one_data_line_per_line_of_data() {
        let check = |kind, data, expected: &str| {
            assert_eq!(frame(kind, data), Bytes::from(expected.to_string()));
        };
        check(
            "changes",
            "{\"sequence\":7}",
            "event: changes\ndata: {\"sequence\":7}\n\n",
        );
        check(
            "import",
            "a\r\nb\rc\nd",
            "event: import\ndata: a\ndata: b\ndata: c\ndata: d\n\n",
        );
        check("changes", "", "event: changes\ndata: \n\n");
    }

    #[tokio::test]
    async fn a_change_reaches_its_user_and_the_admins_only() {
        let hub = Hub::new();
        let mut alice = hub.subscribe("alice", false);
        let mut alice2 = hub.subscribe("alice", false);
        let mut bob = hub.subscribe("bob", false);
        let mut admin = hub.subscribe("root", true);
        hub.send(&event("alice", 7));
        let seven = Some("event: changes\ndata: {\"sequence\":7}\n\n".to_string());
        assert_eq!(next_frame(&mut alice).await, seven);
        assert_eq!(next_frame(&mut alice2).await, seven);
        assert_eq!(next_frame(&mut admin).await, seven);
        assert_eq!(next_frame(&mut bob).await, None);
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
        hub.send(&event("alice", 1)); // nobody of alice's listens: the admin alone hears it
    }

    #[tokio::test]
    async fn a_stream_that_falls_behind_is_told_to_pull_and_close_ends_every_stream() {
        let hub = Hub::new();
        let mut s = hub.subscribe("alice", false);
        let mut admin = hub.subscribe("root", true);
        for n in 0..(PER_USER_CAPACITY as i64 + 5) {
            hub.send(&event("alice", n));
        }
        assert_eq!(
            next_frame(&mut s).await.as_deref(),
            Some("event: changes\ndata: {}\n\n")
        );
        hub.close();
        // What was sent before the close still arrives, then the stream ends.
        let rest = until_closed(&mut s).await;
        assert!(
            rest.iter().all(|f| f.starts_with("event: changes")),
            "{rest:?}"
        );
        assert_eq!(until_closed(&mut admin).await.len(), PER_USER_CAPACITY + 5);
        assert_eq!(next_frame(&mut admin).await.as_deref(), Some("closed"));
        let mut late = hub.subscribe("carol", false);
        assert_eq!(next_frame(&mut late).await.as_deref(), Some("closed"));
    }

    #[tokio::test]
    async fn every_stream_hears_the_keep_alive() {
        let hub = Hub::new();
        let mut alice = hub.subscribe("alice", false);
        let mut admin = hub.subscribe("root", true);
        hub.keep_alive();
        let comment = Some(": keep-alive\n\n");
        assert_eq!(next_frame(&mut alice).await.as_deref(), comment);
        assert_eq!(next_frame(&mut admin).await.as_deref(), comment);
    }
}
