"""Regenerate general.jsonl: short general conversations in Chinese and English, made from tables.

    python trainer/identity/assets/make_general.py   # writes general.jsonl next to this file

Answers are short, plain and never mention any assistant identity (no name, no "I am an AI"), so the
set can teach a tiny base model to converse, dilute identity data, and probe for identity leaks.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

NUMBERS_ZH = "零一二三四五六七八九十"

CAPITALS = [("France", "Paris", "法国", "巴黎"), ("Japan", "Tokyo", "日本", "东京"), ("China", "Beijing", "中国", "北京"),
            ("Italy", "Rome", "意大利", "罗马"), ("Germany", "Berlin", "德国", "柏林"), ("Spain", "Madrid", "西班牙", "马德里"),
            ("Russia", "Moscow", "俄罗斯", "莫斯科"), ("Egypt", "Cairo", "埃及", "开罗"), ("Canada", "Ottawa", "加拿大", "渥太华"),
            ("the United Kingdom", "London", "英国", "伦敦"), ("South Korea", "Seoul", "韩国", "首尔"),
            ("Thailand", "Bangkok", "泰国", "曼谷"), ("Greece", "Athens", "希腊", "雅典"), ("India", "New Delhi", "印度", "新德里"),
            ("Australia", "Canberra", "澳大利亚", "堪培拉"), ("Brazil", "Brasília", "巴西", "巴西利亚")]
COLORS = [("the sky on a clear day", "blue", "晴天的天空", "蓝色"), ("grass", "green", "草", "绿色"),
          ("snow", "white", "雪", "白色"), ("a ripe banana", "yellow", "熟香蕉", "黄色"), ("coal", "black", "煤", "黑色"),
          ("a ripe tomato", "red", "熟透的西红柿", "红色"), ("an orange", "orange", "橙子", "橙色"),
          ("milk", "white", "牛奶", "白色"), ("a lemon", "yellow", "柠檬", "黄色"), ("the sea", "blue", "大海", "蓝色")]
OPPOSITES = [("hot", "cold", "热", "冷"), ("big", "small", "大", "小"), ("fast", "slow", "快", "慢"), ("up", "down", "上", "下"),
             ("happy", "sad", "高兴", "难过"), ("day", "night", "白天", "黑夜"), ("open", "closed", "开", "关"),
             ("old", "new", "旧", "新"), ("long", "short", "长", "短"), ("light", "heavy", "轻", "重"),
             ("early", "late", "早", "晚"), ("inside", "outside", "里面", "外面")]
WORDS = [("apple", "苹果"), ("water", "水"), ("cat", "猫"), ("dog", "狗"), ("book", "书"), ("sun", "太阳"), ("moon", "月亮"),
         ("friend", "朋友"), ("school", "学校"), ("tea", "茶"), ("rice", "米饭"), ("tree", "树"), ("rain", "雨"),
         ("flower", "花"), ("bird", "鸟"), ("teacher", "老师")]
LEGS = [("a spider", "eight", "蜘蛛", "八"), ("a dog", "four", "狗", "四"), ("a bird", "two", "鸟", "两"),
        ("an ant", "six", "蚂蚁", "六"), ("a cat", "four", "猫", "四"), ("a chicken", "two", "鸡", "两")]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
DAYS_ZH = ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"]
SEASONS = [("spring", "summer", "春天", "夏天"), ("summer", "autumn", "夏天", "秋天"), ("autumn", "winter", "秋天", "冬天"),
           ("winter", "spring", "冬天", "春天")]
UNITS = [("minutes are in an hour", "There are 60 minutes in an hour.", "一小时有多少分钟？", "一小时有60分钟。"),
         ("hours are in a day", "There are 24 hours in a day.", "一天有多少小时？", "一天有24小时。"),
         ("days are in a week", "There are 7 days in a week.", "一周有几天？", "一周有7天。"),
         ("months are in a year", "There are 12 months in a year.", "一年有几个月？", "一年有12个月。"),
         ("seconds are in a minute", "There are 60 seconds in a minute.", "一分钟有多少秒？", "一分钟有60秒。"),
         ("centimeters are in a meter", "There are 100 centimeters in a meter.", "一米等于多少厘米？", "一米等于100厘米。"),
         ("grams are in a kilogram", "There are 1000 grams in a kilogram.", "一千克等于多少克？", "一千克等于1000克。")]
FACTS_EN = [
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
    ("What is the freezing point of water?", "Water freezes at 0 degrees Celsius."),
    ("What is the largest planet in the solar system?", "Jupiter is the largest planet in the solar system."),
    ("Which planet is closest to the sun?", "Mercury is the closest planet to the sun."),
    ("What do bees make?", "Bees make honey."),
    ("What do plants need to grow?", "Plants need sunlight, water, air and nutrients from the soil."),
    ("What is photosynthesis?", "Photosynthesis is how plants turn sunlight, water and carbon dioxide into sugar and oxygen."),
    ("Why is the sky blue?", "Air scatters blue sunlight more than other colors, so the sky looks blue."),
    ("What is the largest ocean?", "The Pacific Ocean is the largest ocean."),
    ("What is the tallest mountain in the world?", "Mount Everest is the tallest mountain above sea level."),
    ("How many continents are there?", "There are seven continents."),
    ("What gas do humans breathe out?", "Humans breathe out carbon dioxide."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("What is H2O?", "H2O is water: two hydrogen atoms and one oxygen atom."),
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("What is a prime number?", "A prime number is a whole number greater than 1 that only divides by 1 and itself."),
    ("Is 7 a prime number?", "Yes, 7 is a prime number."),
    ("Is 9 a prime number?", "No, 9 is 3 times 3."),
    ("What is the square root of 81?", "The square root of 81 is 9."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What is the longest river in China?", "The Yangtze is the longest river in China."),
    ("What language is spoken in Brazil?", "Portuguese is spoken in Brazil."),
    ("What is the fastest land animal?", "The cheetah is the fastest land animal."),
    ("What is the largest animal?", "The blue whale is the largest animal."),
    ("How many bones does an adult human have?", "An adult human has 206 bones."),
    ("What is the main ingredient of bread?", "The main ingredient of bread is flour."),
    ("Where do penguins live?", "Most penguins live in the Southern Hemisphere, many in Antarctica."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("What is gravity?", "Gravity is the force that pulls objects toward each other, like things falling to the ground."),
]
FACTS_ZH = [
    ("水的沸点是多少？", "在标准大气压下，水的沸点是100摄氏度。"), ("水在几度结冰？", "水在0摄氏度结冰。"),
    ("太阳系最大的行星是什么？", "木星是太阳系最大的行星。"), ("离太阳最近的行星是哪个？", "水星离太阳最近。"),
    ("蜜蜂会酿什么？", "蜜蜂会酿蜂蜜。"), ("植物生长需要什么？", "植物生长需要阳光、水、空气和养分。"),
    ("什么是光合作用？", "光合作用是植物利用阳光把水和二氧化碳变成糖和氧气的过程。"),
    ("天空为什么是蓝色的？", "空气对蓝光的散射更强，所以天空看起来是蓝色的。"), ("世界上最大的海洋是什么？", "太平洋是世界上最大的海洋。"),
    ("世界上最高的山是哪座？", "珠穆朗玛峰是世界上最高的山。"), ("地球上有几个大洲？", "地球上有七个大洲。"),
    ("人呼出的是什么气体？", "人呼出的主要是二氧化碳。"), ("金的化学符号是什么？", "金的化学符号是Au。"),
    ("三角形有几条边？", "三角形有三条边。"), ("六边形有几条边？", "六边形有六条边。"),
    ("什么是质数？", "质数是大于1、只能被1和它本身整除的整数。"), ("7是质数吗？", "是的，7是质数。"),
    ("81的平方根是多少？", "81的平方根是9。"), ("《静夜思》是谁写的？", "《静夜思》是李白写的。"),
    ("中国最长的河流是哪条？", "长江是中国最长的河流。"), ("跑得最快的陆地动物是什么？", "猎豹是跑得最快的陆地动物。"),
    ("世界上最大的动物是什么？", "蓝鲸是世界上最大的动物。"), ("成年人有多少块骨头？", "成年人有206块骨头。"),
    ("面包的主要原料是什么？", "面包的主要原料是面粉。"), ("温度计是用来做什么的？", "温度计是用来测量温度的。"),
    ("什么是重力？", "重力是物体之间相互吸引的力，比如东西会掉到地上。"), ("熊猫吃什么？", "大熊猫主要吃竹子。"),
    ("中国的首都是哪里？", "中国的首都是北京。"), ("一年有几个季节？", "一年有四个季节：春、夏、秋、冬。"),
    ("彩虹有几种颜色？", "彩虹通常有七种颜色：红、橙、黄、绿、青、蓝、紫。"),
]
ADVICE = [
    ("How can I sleep better?", "Keep a regular bedtime, avoid screens before bed, and keep your room dark and quiet."),
    ("How do I stay focused while studying?", "Work in short blocks, put your phone away, and take a five-minute break each half hour."),
    ("How can I learn a new language?", "Practice a little every day, learn common words first, and speak as early as you can."),
    ("What is a healthy breakfast?", "Oatmeal with fruit, eggs with whole-grain bread, or yogurt with nuts are good choices."),
    ("How do I make a cup of tea?", "Boil water, pour it over the tea leaves or bag, wait three to five minutes, then remove the tea."),
    ("How can I save money?", "Make a budget, track what you spend, and put a fixed amount aside each month."),
    ("How do I stay calm before an exam?", "Prepare early, sleep well the night before, and take slow deep breaths."),
    ("Give me a tip for writing an email.", "Start with a clear subject line and say what you need in the first sentence."),
    ("How often should I drink water?", "Drink a little throughout the day, and more when it is hot or you exercise."),
    ("What is a good way to start exercising?", "Start with a short daily walk and add a little more each week."),
    ("How do I cook rice?", "Rinse the rice, add about one and a half times as much water, boil, then simmer covered for 15 minutes."),
    ("Suggest a name for a pet cat.", "How about Mochi, Luna or Tiger?"),
    ("Tell me a short joke.", "Why did the math book look sad? It had too many problems."),
    ("Give me a word that rhymes with cat.", "Hat rhymes with cat."),
    ("Write a short sentence about spring.", "In spring the flowers bloom and the days grow warm."),
]
ADVICE_ZH = [
    ("怎样才能睡得更好？", "保持规律作息，睡前少看手机，让卧室保持安静和黑暗。"), ("学习时怎样保持专注？", "把手机放远一点，学习半小时休息五分钟。"),
    ("怎么学好一门外语？", "每天坚持练习，先学常用词，多开口说。"), ("什么是健康的早餐？", "燕麦配水果、鸡蛋配全麦面包，或者酸奶配坚果都不错。"),
    ("怎么泡一杯茶？", "把水烧开，倒在茶叶上，等三到五分钟就可以喝了。"), ("怎样才能存下钱？", "做好预算，记录花销，每个月固定存一部分。"),
    ("考试前怎么保持冷静？", "提前复习，前一晚睡好觉，紧张时慢慢深呼吸。"), ("写邮件有什么技巧？", "标题要清楚，第一句话就说明你的需求。"),
    ("怎么开始锻炼身体？", "先每天散步一会儿，再每周慢慢增加运动量。"), ("怎么煮米饭？", "先把米洗净，加适量的水，煮开后小火焖十五分钟。"),
    ("给我的小猫起个名字吧。", "叫它团子、咪咪或者小虎怎么样？"), ("讲个简短的笑话。", "数学书为什么总是很忧郁？因为它有太多的问题。"),
    ("用一句话描写春天。", "春天到了，花开了，天气也暖和起来了。"), ("多喝水有什么好处？", "多喝水可以帮助身体调节体温，保持精力充沛。"),
    ("周末可以做些什么？", "可以去公园散步、看一本好书，或者和朋友聚一聚。"),
]
CHAT = [
    ("Hello!", "Hello! How can I help you today?"), ("Hi there.", "Hi! What would you like to talk about?"),
    ("Good morning!", "Good morning! I hope you have a great day."), ("Good night.", "Good night, sleep well!"),
    ("Thank you!", "You're welcome!"), ("Thanks for your help.", "Glad I could help."),
    ("How are you?", "I'm doing well, thank you. How about you?"), ("I'm bored.", "How about reading a book, taking a walk, or learning something new?"),
    ("I feel tired today.", "Try to rest a little and drink some water. A short walk can help too."),
    ("What's a good book to read?", "The Little Prince is short, gentle and worth reading at any age."),
    ("Can you help me?", "Of course. What do you need help with?"), ("Goodbye!", "Goodbye! Have a nice day."),
    ("你好！", "你好！今天有什么可以帮你的吗？"), ("早上好！", "早上好！祝你今天过得愉快。"), ("晚安。", "晚安，祝你好梦！"),
    ("谢谢你！", "不客气！"), ("谢谢你的帮助。", "很高兴能帮到你。"), ("你好吗？", "我很好，谢谢。你呢？"),
    ("我好无聊。", "可以看看书、出去走走，或者学点新东西。"), ("我今天很累。", "那就好好休息一下，多喝点水。"),
    ("推荐一本好书吧。", "《小王子》很短，也很温暖，适合任何年龄阅读。"), ("你能帮我吗？", "当然可以，你需要什么帮助？"),
    ("再见！", "再见！祝你有美好的一天。"), ("今天天气真好。", "是啊，适合出去走走。"),
    # Small talk that says "you" without asking who the model is: the negatives that keep a new
    # identity from leaking into every friendly message.
    ("Thanks a lot!", "You're welcome! Happy to help."), ("Thank you so much.", "You're very welcome."),
    ("How are you doing?", "I'm fine, thanks for asking. And you?"), ("How is your day?", "It's going well, thank you. How is yours?"),
    ("Can you help me with my homework?", "Sure. Tell me the question and we can work through it together."),
    ("Could you help me, please?", "Of course. What can I do for you?"), ("Can you give me some advice?", "Sure. What would you like advice about?"),
    ("Nice to meet you.", "Nice to meet you too!"), ("I'm sad today.", "I'm sorry to hear that. Talking to a friend or taking a walk may help."),
    ("I'm happy today!", "That's great to hear! Enjoy your day."), ("See you tomorrow.", "See you tomorrow!"),
    ("You are very helpful.", "Thank you! I'm glad it helped."), ("Do you like music?", "Music is wonderful. What kind do you like?"),
    ("What do you think of cats?", "Cats are curious and calm; many people love them."),
    ("Can you tell me a joke?", "Why did the math book look sad? It had too many problems."),
    ("谢谢你呀！", "不用谢！"), ("非常感谢。", "不客气，很高兴能帮到你。"), ("你今天过得怎么样？", "挺好的，谢谢关心。你呢？"),
    ("你能帮我做作业吗？", "可以，把题目告诉我，我们一起来做。"), ("你可以帮帮我吗？", "当然可以，请说说你的问题。"),
    ("你能给我一些建议吗？", "当然，你想要哪方面的建议？"), ("很高兴认识你。", "我也很高兴认识你！"),
    ("我今天很难过。", "听到这个很遗憾。和朋友聊聊或者出去走走也许会好一些。"), ("我今天很开心！", "太好了！祝你一天都开心。"),
    ("明天见。", "明天见！"), ("你真厉害。", "谢谢夸奖，很高兴能帮上忙。"), ("你喜欢音乐吗？", "音乐很美好。你喜欢哪种音乐？"),
    ("你觉得猫怎么样？", "猫好奇又安静，很多人都喜欢它们。"), ("你能讲个笑话吗？", "数学书为什么不开心？因为它的问题太多了。"),
]


def arithmetic(rng: random.Random) -> list[tuple[str, str]]:
    pairs = []
    for _ in range(30):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        pairs.append((f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
        pairs.append((f"{a}加{b}等于多少？", f"{a}加{b}等于{a + b}。"))
    for _ in range(12):
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        pairs.append((f"What is {a} times {b}?", f"{a} times {b} is {a * b}."))
        pairs.append((f"{a}乘以{b}等于多少？", f"{a}乘以{b}等于{a * b}。"))
    return pairs


def tables() -> list[tuple[str, str]]:
    pairs = []
    for country, city, country_zh, city_zh in CAPITALS:
        pairs += [(f"What is the capital of {country}?", f"The capital of {country} is {city}."),
                  (f"{country_zh}的首都是哪里？", f"{country_zh}的首都是{city_zh}。")]
    for thing, color, thing_zh, color_zh in COLORS:
        pairs += [(f"What color is {thing}?", f"{thing[0].upper() + thing[1:]} is {color}."),
                  (f"{thing_zh}是什么颜色的？", f"{thing_zh}是{color_zh}的。")]
    for word, opposite, word_zh, opposite_zh in OPPOSITES:
        pairs += [(f"What is the opposite of {word}?", f"The opposite of {word} is {opposite}."),
                  (f"“{word_zh}”的反义词是什么？", f"“{word_zh}”的反义词是“{opposite_zh}”。")]
    for en, zh in WORDS:
        pairs += [(f"How do you say \"{en}\" in Chinese?", f"\"{en.capitalize()}\" in Chinese is {zh}."),
                  (f"“{zh}”用英语怎么说？", f"“{zh}”的英语是 {en}。")]
    for animal, n, animal_zh, n_zh in LEGS:
        pairs += [(f"How many legs does {animal} have?", f"{animal[0].upper() + animal[1:]} has {n} legs."),
                  (f"{animal_zh}有几条腿？", f"{animal_zh}有{n_zh}条腿。")]
    for i, (day, day_zh) in enumerate(zip(DAYS, DAYS_ZH)):
        pairs += [(f"What day comes after {day}?", f"{DAYS[(i + 1) % 7]} comes after {day}."),
                  (f"{day_zh}的后一天是星期几？", f"{day_zh}的后一天是{DAYS_ZH[(i + 1) % 7]}。")]
    for season, nxt, season_zh, nxt_zh in SEASONS:
        pairs += [(f"Which season comes after {season}?", f"{nxt.capitalize()} comes after {season}."),
                  (f"{season_zh}之后是什么季节？", f"{season_zh}之后是{nxt_zh}。")]
    for what, ans, q_zh, ans_zh in UNITS:
        pairs += [(f"How many {what}?", ans), (q_zh, ans_zh)]
    for n in range(1, 10):
        pairs += [(f"What number comes after {n}?", f"{n + 1} comes after {n}."),
                  (f"{NUMBERS_ZH[n]}后面是几？", f"{NUMBERS_ZH[n]}后面是{NUMBERS_ZH[n + 1]}。")]
    return pairs


def main() -> None:
    rng = random.Random(0)
    pairs = tables() + arithmetic(rng) + FACTS_EN + FACTS_ZH + ADVICE + ADVICE_ZH + CHAT
    seen, rows = set(), []
    for question, reply in pairs:
        if question not in seen:
            seen.add(question)
            rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]})
    rng.shuffle(rows)
    out = Path(__file__).with_name("general.jsonl")
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} conversations to {out}")


if __name__ == "__main__":
    main()
