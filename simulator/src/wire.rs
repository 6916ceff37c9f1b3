//! Puts records on the wire exactly as ClassLink sends OneRoster 1.1: booleans as `"true"` /
//! `"false"`, absent values as `""`, references as `{href, sourcedId, type}`.
//!
//! Records are serialized straight from the typed model, one page at a time, so the XL data set
//! never exists as JSON in memory.

use std::collections::HashSet;
use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};

use crate::model::{
    AcademicSession, Class, Collection, Course, Demographics, Enrollment, Fields, Org, Periods,
    Record, User,
};

/// Per-request serialization context: where hrefs point and which fields were asked for.
pub struct WireCtx<'a> {
    pub base_url: &'a str,
    pub fields: Option<&'a HashSet<String>>,
}

impl WireCtx<'_> {
    fn wants(&self, key: &str) -> bool {
        self.fields.is_none_or(|f| f.contains(key))
    }
}

/// A record that knows its wire fields.
pub trait WireRecord: Record {
    /// Every top-level field name this record type has on the wire (for `fields=` and `filter=`).
    const FIELDS: &'static [&'static str];
    fn write<M: SerializeMap>(&self, w: &mut FieldWriter<'_, M>) -> Result<(), M::Error>;
    /// Fields put on the wire as they are; one named like a regular field replaces it (how a
    /// test plants a value the typed model cannot hold: `"status": "archived"`, a
    /// `dateLastModified` without a zone, `"primary": 1`, `"user": null`...).
    fn extra(&self) -> &Fields;
}

pub struct FieldWriter<'a, M> {
    map: M,
    ctx: &'a WireCtx<'a>,
    overrides: &'a Fields,
    writing_extra: bool,
}

impl<M: SerializeMap> FieldWriter<'_, M> {
    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), M::Error> {
        if !self.ctx.wants(key) || (!self.writing_extra && self.overrides.contains_key(key)) {
            return Ok(());
        }
        self.map.serialize_entry(key, value)
    }

    fn common<R: Record>(&mut self, r: &R, metadata: &Fields) -> Result<(), M::Error> {
        self.field("sourcedId", r.sourced_id())?;
        self.field("status", r.status().as_str())?;
        self.field("dateLastModified", &Timestamp(r.date_last_modified()))?;
        self.field("metadata", metadata)
    }

    fn flag(&mut self, key: &str, value: bool) -> Result<(), M::Error> {
        self.field(key, if value { "true" } else { "false" })
    }

    fn date(&mut self, key: &str, value: Option<NaiveDate>) -> Result<(), M::Error> {
        match value {
            Some(d) => self.field(key, &d.format("%Y-%m-%d").to_string()),
            None => self.field(key, ""),
        }
    }

    fn reference(&mut self, key: &str, target: RefTarget, id: &str) -> Result<(), M::Error> {
        let base = self.ctx.base_url;
        self.field(key, &GuidRef { base, target, id })
    }

    fn optional_reference(
        &mut self,
        key: &str,
        target: RefTarget,
        id: Option<&str>,
    ) -> Result<(), M::Error> {
        match id {
            Some(id) => self.reference(key, target, id),
            // ClassLink leaves an absent reference as an empty string, like other absent values.
            None => self.field(key, ""),
        }
    }

    fn references(&mut self, key: &str, target: RefTarget, ids: &[String]) -> Result<(), M::Error> {
        let base = self.ctx.base_url;
        self.field(key, &GuidRefs { base, target, ids })
    }

    fn extra(&mut self, extra: &Fields) -> Result<(), M::Error> {
        self.writing_extra = true;
        for (k, v) in extra {
            self.field(k, v)?;
        }
        Ok(())
    }
}

/// `dateLastModified` as ClassLink writes it: ISO-8601 UTC with milliseconds.
struct Timestamp(DateTime<Utc>);

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_timestamp(self.0))
    }
}

pub fn format_timestamp(t: DateTime<Utc>) -> impl fmt::Display {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ")
}

#[derive(Clone, Copy)]
struct RefTarget {
    collection: Collection,
    ref_type: &'static str,
}

const ORG: RefTarget = RefTarget {
    collection: Collection::Orgs,
    ref_type: "org",
};
const SESSION: RefTarget = RefTarget {
    collection: Collection::AcademicSessions,
    ref_type: "academicSession",
};
const COURSE: RefTarget = RefTarget {
    collection: Collection::Courses,
    ref_type: "course",
};
const CLASS: RefTarget = RefTarget {
    collection: Collection::Classes,
    ref_type: "class",
};
const USER: RefTarget = RefTarget {
    collection: Collection::Users,
    ref_type: "user",
};

struct GuidRef<'a> {
    base: &'a str,
    target: RefTarget,
    id: &'a str,
}

impl Serialize for GuidRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry(
            "href",
            &format!(
                "{}/{}/{}",
                self.base,
                self.target.collection.path(),
                self.id
            ),
        )?;
        m.serialize_entry("sourcedId", self.id)?;
        m.serialize_entry("type", self.target.ref_type)?;
        m.end()
    }
}

struct GuidRefs<'a> {
    base: &'a str,
    target: RefTarget,
    ids: &'a [String],
}

impl Serialize for GuidRefs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.ids.len()))?;
        for id in self.ids {
            seq.serialize_element(&GuidRef {
                base: self.base,
                target: self.target,
                id,
            })?;
        }
        seq.end()
    }
}

/// One record plus its context, serializable.
pub struct OnWire<'a, R> {
    pub record: &'a R,
    pub ctx: &'a WireCtx<'a>,
}

impl<R: WireRecord> Serialize for OnWire<'_, R> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut w = FieldWriter {
            map: s.serialize_map(None)?,
            ctx: self.ctx,
            overrides: self.record.extra(),
            writing_extra: false,
        };
        self.record.write(&mut w)?;
        w.map.end()
    }
}

/// A page of records as a JSON array.
pub struct PageOnWire<'a, R> {
    pub records: Vec<&'a R>,
    pub ctx: &'a WireCtx<'a>,
}

impl<R: WireRecord> Serialize for PageOnWire<'_, R> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.records.len()))?;
        for record in &self.records {
            seq.serialize_element(&OnWire {
                record: *record,
                ctx: self.ctx,
            })?;
        }
        seq.end()
    }
}

/// Serializes a record with every field (used by generic `filter=` clauses).
pub fn to_value<R: WireRecord>(record: &R, base_url: &str) -> serde_json::Value {
    let ctx = WireCtx {
        base_url,
        fields: None,
    };
    // Serializing our own types into a Value cannot fail (string keys, no non-finite floats).
    serde_json::to_value(OnWire { record, ctx: &ctx }).unwrap_or_default()
}

const COMMON: [&str; 4] = ["sourcedId", "status", "dateLastModified", "metadata"];

macro_rules! fields {
    ($($f:literal),* $(,)?) => {
        &[COMMON[0], COMMON[1], COMMON[2], COMMON[3], $($f),*]
    };
}

impl WireRecord for Org {
    fn extra(&self) -> &Fields {
        &self.extra
    }
    const FIELDS: &'static [&'static str] =
        fields!["name", "type", "identifier", "parent", "children"];
    fn write<M: SerializeMap>(&self, w: &mut FieldWriter<'_, M>) -> Result<(), M::Error> {
        w.common(self, &self.metadata)?;
        w.field("name", &self.name)?;
        w.field("type", &*self.org_type)?;
        w.field("identifier", &self.identifier)?;
        w.optional_reference("parent", ORG, self.parent.as_deref())?;
        w.references("children", ORG, &self.children)?;
        w.extra(&self.extra)
    }
}

impl WireRecord for AcademicSession {
    fn extra(&self) -> &Fields {
        &self.extra
    }
    const FIELDS: &'static [&'static str] = fields![
        "title",
        "type",
        "startDate",
        "endDate",
        "parent",
        "children",
        "schoolYear"
    ];
    fn write<M: SerializeMap>(&self, w: &mut FieldWriter<'_, M>) -> Result<(), M::Error> {
        w.common(self, &self.metadata)?;
        w.field("title", &self.title)?;
        w.field("type", &*self.session_type)?;
        w.date("startDate", self.start_date)?;
        w.date("endDate", self.end_date)?;
        w.optional_reference("parent", SESSION, self.parent.as_deref())?;
        w.references("children", SESSION, &self.children)?;
        w.field("schoolYear", &self.school_year)?;
        w.extra(&self.extra)
    }
}

impl WireRecord for Course {
    fn extra(&self) -> &Fields {
        &self.extra
    }
    const FIELDS: &'static [&'static str] = fields![
        "title",
        "courseCode",
        "schoolYear",
        "grades",
        "subjects",
        "org"
    ];
    fn write<M: SerializeMap>(&self, w: &mut FieldWriter<'_, M>) -> Result<(), M::Error> {
        w.common(self, &self.metadata)?;
        w.field("title", &self.title)?;
        w.field("courseCode", &self.course_code)?;
        w.optional_reference("schoolYear", SESSION, self.school_year.as_deref())?;
        w.field("grades", &self.grades)?;
        w.field("subjects", &self.subjects)?;
        w.reference("org", ORG, &self.org)?;
        w.extra(&self.extra)
    }
}

impl WireRecord for Class {
    fn extra(&self) -> &Fields {
        &self.extra
    }
    const FIELDS: &'static [&'static str] = fields![
        "title",
        "classCode",
        "classType",
        "location",
        "grades",
        "subjects",
        "course",
        "school",
        "terms",
        "subjectCodes",
        "periods"
    ];
    fn write<M: SerializeMap>(&self, w: &mut FieldWriter<'_, M>) -> Result<(), M::Error> {
        w.common(self, &self.metadata)?;
        w.field("title", &self.title)?;
        w.field("classCode", &self.class_code)?;
        w.field("classType", &*self.class_type)?;
        w.field("location", &self.location)?;
        w.field("grades", &self.grades)?;
        w.field("subjects", &self.subjects)?;
        w.reference("course", COURSE, &self.course)?;
        w.reference("school", ORG, &self.school)?;
        w.references("terms", SESSION, &self.terms)?;
        w.field("subjectCodes", &self.subject_codes)?;
        match &self.periods {
            Periods::List(list) => w.field("periods", list)?,
            Periods::Text(text) => w.field("periods", text)?,
        }
        w.extra(&self.extra)
    }
}

struct UserIdsOnWire<'a>(&'a [crate::model::UserId]);

impl Serialize for UserIdsOnWire<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for id in self.0 {
            let mut m = serde_json::Map::new();
            m.insert("type".into(), id.id_type.to_string().into());
            m.insert("identifier".into(), id.identifier.clone().into());
            seq.serialize_element(&m)?;
        }
        seq.end()
    }
}

impl WireRecord for User {
    fn extra(&self) -> &Fields {
        &self.extra
    }
    const FIELDS: &'static [&'static str] = fields![
        "username",
        "userIds",
        "enabledUser",
        "givenName",
        "familyName",
        "middleName",
        "role",
        "identifier",
        "email",
        "sms",
        "phone",
        "agents",
        "orgs",
        "grades",
        "password"
    ];
    fn write<M: SerializeMap>(&self, w: &mut FieldWriter<'_, M>) -> Result<(), M::Error> {
        w.common(self, &self.metadata)?;
        w.field("username", &self.username)?;
        w.field("userIds", &UserIdsOnWire(&self.user_ids))?;
        w.flag("enabledUser", self.enabled_user)?;
        w.field("givenName", &self.given_name)?;
        w.field("familyName", &self.family_name)?;
        w.field("middleName", &self.middle_name)?;
        w.field("role", &*self.role)?;
        w.field("identifier", &self.identifier)?;
        w.field("email", &self.email)?;
        w.field("sms", &self.sms)?;
        w.field("phone", &self.phone)?;
        w.references("agents", USER, &self.agents)?;
        w.references("orgs", ORG, &self.orgs)?;
        w.field("grades", &self.grades)?;
        w.field("password", &self.password)?;
        w.extra(&self.extra)
    }
}

impl WireRecord for Enrollment {
    fn extra(&self) -> &Fields {
        &self.extra
    }
    const FIELDS: &'static [&'static str] = fields![
        "user",
        "class",
        "school",
        "role",
        "primary",
        "beginDate",
        "endDate"
    ];
    fn write<M: SerializeMap>(&self, w: &mut FieldWriter<'_, M>) -> Result<(), M::Error> {
        w.common(self, &self.metadata)?;
        w.reference("user", USER, &self.user)?;
        w.reference("class", CLASS, &self.class)?;
        w.reference("school", ORG, &self.school)?;
        w.field("role", &*self.role)?;
        w.flag("primary", self.primary)?;
        w.date("beginDate", self.begin_date)?;
        w.date("endDate", self.end_date)?;
        w.extra(&self.extra)
    }
}

impl WireRecord for Demographics {
    fn extra(&self) -> &Fields {
        &self.extra
    }
    const FIELDS: &'static [&'static str] = fields![
        "birthDate",
        "sex",
        "americanIndianOrAlaskaNative",
        "asian",
        "blackOrAfricanAmerican",
        "nativeHawaiianOrOtherPacificIslander",
        "white",
        "demographicRaceTwoOrMoreRaces",
        "hispanicOrLatinoEthnicity",
        "countryOfBirthCode",
        "stateOfBirthAbbreviation",
        "cityOfBirth",
        "publicSchoolResidenceStatus"
    ];
    fn write<M: SerializeMap>(&self, w: &mut FieldWriter<'_, M>) -> Result<(), M::Error> {
        w.common(self, &self.metadata)?;
        w.date("birthDate", self.birth_date)?;
        w.field("sex", &*self.sex)?;
        w.flag(
            "americanIndianOrAlaskaNative",
            self.american_indian_or_alaska_native,
        )?;
        w.flag("asian", self.asian)?;
        w.flag("blackOrAfricanAmerican", self.black_or_african_american)?;
        w.flag(
            "nativeHawaiianOrOtherPacificIslander",
            self.native_hawaiian_or_other_pacific_islander,
        )?;
        w.flag("white", self.white)?;
        w.flag(
            "demographicRaceTwoOrMoreRaces",
            self.demographic_race_two_or_more_races,
        )?;
        w.flag(
            "hispanicOrLatinoEthnicity",
            self.hispanic_or_latino_ethnicity,
        )?;
        w.field("countryOfBirthCode", &self.country_of_birth_code)?;
        w.field(
            "stateOfBirthAbbreviation",
            &self.state_of_birth_abbreviation,
        )?;
        w.field("cityOfBirth", &self.city_of_birth)?;
        w.field(
            "publicSchoolResidenceStatus",
            &self.public_school_residence_status,
        )?;
        w.extra(&self.extra)
    }
}
