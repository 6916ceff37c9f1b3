//! The collection registry: the one definition of the OneRoster collections the daemon reads,
//! each bound to its endpoint, wire type, normalizer and roster entity, in pull order.
//!
//! Every pull, count, audit and benchmark iterates it: [`each_collection!`] runs a block once
//! per collection with a type `K: Kind` for it, and [`Collection::ALL`] lists them as values.
//! The order is the pull order: referenced types first, so every reference is checked against
//! a complete set, and demographics just before users, so a user's are at hand when it comes.

use crate::domain::Entity;
use crate::normalize::{self, Normalized};
use crate::oneroster::{Endpoint, EndpointSpec, WireRecord, wire};
use crate::snapshot::Take;

/// One collection, as a type (see [`each_collection!`]).
pub trait Kind: Send + 'static {
    const COLLECTION: Collection;
    type Wire: WireRecord;
    type Record: Take + Send + 'static;
    /// The `fields=` selection asked for, when the daemon needs only some fields (a server
    /// may ignore it; the wire type keeps only what is needed anyway).
    const FIELDS: Option<&'static [&'static str]>;
    fn normalize(wire: Self::Wire) -> Normalized<Self::Record>;
}

macro_rules! registry {
    ($d:tt $(
        $kind:ident {
            path: $path:literal,
            name: $name:literal,
            wire: $wire:ty,
            record: $record:ty,
            normalize: $normalize:path,
            entity: $entity:expr,
            off_switch: $off:expr,
            fields: $fields:expr,
            permission: $permission:literal $(,)?
        }
    )*) => {
        /// A OneRoster collection, in pull order.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Collection { $($kind),* }

        impl Collection {
            /// Every collection, in pull order.
            pub const ALL: &'static [Collection] = &[$(Collection::$kind),*];

            pub fn endpoint(self) -> Endpoint {
                match self { $(Collection::$kind => <$wire as WireRecord>::ENDPOINT),* }
            }

            /// The roster table it fills (`None` for demographics, joined into users).
            pub fn entity(self) -> Option<Entity> {
                match self { $(Collection::$kind => $entity),* }
            }

            /// Its name in findings and logs.
            pub fn name(self) -> &'static str {
                self.endpoint().name
            }
        }

        /// The collections as types.
        pub mod kind {
            $(pub struct $kind;)*
        }

        $(
            impl WireRecord for $wire {
                const ENDPOINT: Endpoint = &EndpointSpec {
                    path: $path,
                    name: $name,
                    off_switch: $off,
                    permission: $permission,
                };
            }

            impl Kind for kind::$kind {
                const COLLECTION: Collection = Collection::$kind;
                type Wire = $wire;
                type Record = $record;
                const FIELDS: Option<&'static [&'static str]> = $fields;
                fn normalize(wire: $wire) -> Normalized<$record> {
                    $normalize(wire)
                }
            }
        )*

        /// Runs `$body` once per collection, in pull order, with `$K` naming its [`Kind`].
        /// The body is a block of the caller's function: `?`, `return`, `break` and `continue`
        /// mean what they mean there.
        macro_rules! each_collection {
            ($d K:ident => $d body:block) => {
                $( { type $d K = $crate::registry::kind::$kind; $d body } )*
            };
        }
        pub(crate) use each_collection;
    };
}

registry! { $
    Orgs {
        path: "orgs",
        name: "orgs",
        wire: wire::Org,
        record: crate::domain::Org,
        normalize: normalize::org,
        entity: Some(Entity::Orgs),
        off_switch: None,
        fields: None,
        permission: "the district's schools and orgs (\"Full Permissions\")",
    }
    AcademicSessions {
        path: "academicSessions",
        name: "academic_sessions",
        wire: wire::AcademicSession,
        record: crate::domain::AcademicSession,
        normalize: normalize::academic_session,
        entity: Some(Entity::AcademicSessions),
        off_switch: None,
        fields: None,
        permission: "terms and academic sessions (\"Full Permissions\")",
    }
    Courses {
        path: "courses",
        name: "courses",
        wire: wire::Course,
        record: crate::domain::Course,
        normalize: normalize::course,
        entity: Some(Entity::Courses),
        off_switch: None,
        fields: None,
        permission: "courses (\"Full Permissions\")",
    }
    Classes {
        path: "classes",
        name: "classes",
        wire: wire::Class,
        record: crate::domain::Class,
        normalize: normalize::class,
        entity: Some(Entity::Classes),
        off_switch: None,
        fields: None,
        permission: "classes (\"Full Permissions\")",
    }
    Demographics {
        path: "demographics",
        name: "demographics",
        wire: wire::Demographics,
        record: crate::domain::Demographics,
        normalize: normalize::demographics,
        entity: None,
        off_switch: Some("demographics = \"off\""),
        fields: Some(&wire::DEMOGRAPHICS_FIELDS),
        permission: "demographics (enable \"Demographics\" for the app)",
    }
    Users {
        path: "users",
        name: "users",
        wire: wire::User,
        record: crate::domain::User,
        normalize: normalize::user,
        entity: Some(Entity::Users),
        off_switch: None,
        fields: None,
        permission: "users, with unenrolled users if the app needs them (\"Full Permissions\")",
    }
    Enrollments {
        path: "enrollments",
        name: "enrollments",
        wire: wire::Enrollment,
        record: crate::domain::Enrollment,
        normalize: normalize::enrollment,
        entity: Some(Entity::Enrollments),
        off_switch: None,
        fields: None,
        permission: "enrollments (\"Full Permissions\")",
    }
}

impl Collection {
    /// Whether the collection can be turned off (a 403 or 404 then names the key).
    pub fn is_optional(self) -> bool {
        self.endpoint().off_switch.is_some()
    }
}

impl std::fmt::Display for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_iteration_follows_the_pull_order_and_covers_every_entity() {
        let mut seen = Vec::new();
        each_collection!(K => {
            seen.push(K::COLLECTION);
        });
        assert_eq!(seen, Collection::ALL);
        for entity in Entity::ALL {
            let filled_by: Vec<_> = Collection::ALL
                .iter()
                .filter(|c| c.entity() == Some(entity))
                .collect();
            assert_eq!(filled_by.len(), 1, "{entity}");
        }
        let users = Collection::ALL.iter().position(|c| *c == Collection::Users);
        let demographics = Collection::ALL
            .iter()
            .position(|c| *c == Collection::Demographics);
        assert!(demographics < users, "demographics come before users");
    }
}
