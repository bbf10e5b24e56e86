//! The keymap, as data: the event loop looks keys up here and the help overlay is generated from the same
//! table, so help can never disagree with what the keys do.

/// A key, independent of the terminal library.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    Char(char),
    Ctrl(char),
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    Enter,
    Esc,
    Tab,
    Backspace,
}

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Up,
    Down,
    PageUp,
    PageDown,
    Top,
    Bottom,
    Open,
    Back,
    Filter,
    Command,
    Help,
    TogglePause,
    SortNext,
    SortReverse,
    Actions,
    Mark,
    CancelJob,
    Refresh,
    Quit,
}

/// Where a binding applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Everywhere,
    Fleet,
}

pub struct Binding {
    pub keys: &'static [Key],
    pub action: Action,
    pub scope: Scope,
    pub help: &'static str,
}

pub const KEYMAP: &[Binding] = &[
    Binding { keys: &[Key::Char('j'), Key::Down], action: Action::Down, scope: Scope::Fleet, help: "next server" },
    Binding { keys: &[Key::Char('k'), Key::Up], action: Action::Up, scope: Scope::Fleet, help: "previous server" },
    Binding {
        keys: &[Key::PageDown, Key::Ctrl('f')],
        action: Action::PageDown,
        scope: Scope::Fleet,
        help: "page down",
    },
    Binding { keys: &[Key::PageUp, Key::Ctrl('b')], action: Action::PageUp, scope: Scope::Fleet, help: "page up" },
    Binding { keys: &[Key::Char('g'), Key::Home], action: Action::Top, scope: Scope::Fleet, help: "first server" },
    Binding { keys: &[Key::Char('G'), Key::End], action: Action::Bottom, scope: Scope::Fleet, help: "last server" },
    Binding { keys: &[Key::Enter, Key::Char('l')], action: Action::Open, scope: Scope::Fleet, help: "open the server" },
    Binding {
        keys: &[Key::Char('/')],
        action: Action::Filter,
        scope: Scope::Fleet,
        help: "filter: text /re/ status: plan: customer: label:",
    },
    Binding { keys: &[Key::Char('s')], action: Action::SortNext, scope: Scope::Fleet, help: "sort by the next column" },
    Binding { keys: &[Key::Char('S')], action: Action::SortReverse, scope: Scope::Fleet, help: "reverse the sort" },
    Binding {
        keys: &[Key::Esc, Key::Char('h')],
        action: Action::Back,
        scope: Scope::Everywhere,
        help: "back / clear the filter",
    },
    Binding {
        keys: &[Key::Char(':')],
        action: Action::Command,
        scope: Scope::Everywhere,
        help: "command mode (:servers, :quit …)",
    },
    Binding {
        keys: &[Key::Char(' ')],
        action: Action::TogglePause,
        scope: Scope::Everywhere,
        help: "pause / resume the live feed",
    },
    Binding {
        keys: &[Key::Char('a')],
        action: Action::Actions,
        scope: Scope::Everywhere,
        help: "actions on this server / the marked servers",
    },
    Binding { keys: &[Key::Char('m')], action: Action::Mark, scope: Scope::Fleet, help: "mark / unmark for actions" },
    Binding { keys: &[Key::Char('c')], action: Action::CancelJob, scope: Scope::Everywhere, help: "cancel the job" },
    Binding {
        keys: &[Key::Char('r')],
        action: Action::Refresh,
        scope: Scope::Everywhere,
        help: "refresh the audit log",
    },
    Binding { keys: &[Key::Char('?')], action: Action::Help, scope: Scope::Everywhere, help: "this help" },
    Binding { keys: &[Key::Char('q'), Key::Ctrl('c')], action: Action::Quit, scope: Scope::Everywhere, help: "quit" },
];

/// The action bound to `key` on the fleet screen (`fleet`) or elsewhere.
pub fn lookup(key: Key, fleet: bool) -> Option<Action> {
    KEYMAP.iter().find(|b| (fleet || b.scope == Scope::Everywhere) && b.keys.contains(&key)).map(|b| b.action)
}

pub fn key_label(k: Key) -> String {
    match k {
        Key::Char(' ') => "space".into(),
        Key::Char(c) => c.to_string(),
        Key::Ctrl(c) => format!("ctrl-{c}"),
        Key::Up => "↑".into(),
        Key::Down => "↓".into(),
        Key::PageUp => "pgup".into(),
        Key::PageDown => "pgdn".into(),
        Key::Home => "home".into(),
        Key::End => "end".into(),
        Key::Enter => "enter".into(),
        Key::Esc => "esc".into(),
        Key::Tab => "tab".into(),
        Key::Backspace => "backspace".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_key_is_bound_twice_in_one_scope() {
        let mut seen = std::collections::HashSet::new();
        for b in KEYMAP {
            for k in b.keys {
                assert!(seen.insert(*k), "{k:?} is bound twice");
            }
        }
    }

    #[test]
    fn fleet_keys_do_nothing_elsewhere() {
        assert_eq!(lookup(Key::Char('j'), true), Some(Action::Down));
        assert_eq!(lookup(Key::Char('j'), false), None);
        assert_eq!(lookup(Key::Char('q'), false), Some(Action::Quit));
    }
}
